// Runs a benchmark variant in a child process and reads its result back through a pipe:
// peaks of resident memory stay separate, and the parent never starts OpenMP threads (fork
// would inherit them).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <stdexcept>
#include <type_traits>

template <typename Work>
auto in_child(const Work& work) {
  using Result = decltype(work());
  static_assert(std::is_trivially_copyable_v<Result>, "the result crosses a pipe as bytes");
  int channel[2];
  if (pipe(channel) != 0) throw std::runtime_error("pipe failed");
  const pid_t pid = fork();
  if (pid == 0) {
    close(channel[0]);
    int status = 0;
    try {
      const Result result = work();
      status = write(channel[1], &result, sizeof result) == sizeof result ? 0 : 1;
    } catch (const std::exception& error) {
      std::fprintf(stderr, "child failed: %s\n", error.what());
      status = 1;
    }
    _exit(status);
  }
  close(channel[1]);
  Result result{};
  const bool got = read(channel[0], &result, sizeof result) == sizeof result;
  close(channel[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!got || !WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error("child process failed");
  return result;
}
