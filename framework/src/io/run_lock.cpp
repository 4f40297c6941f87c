#include "shardlora/io/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "shardlora/io/durable_file.h"
#include "shardlora/kernels/check.h"

namespace shardlora::io {
namespace {

std::string this_host() {
  char name[HOST_NAME_MAX + 1] = {};
  return ::gethostname(name, sizeof name - 1) == 0 ? name : "unknown host";
}

// What the holder wrote: "host H pid P".
std::string holder_of(int fd) {
  char text[512] = {};
  const ssize_t n = ::pread(fd, text, sizeof text - 1, 0);
  std::string holder(text, n > 0 ? static_cast<size_t>(n) : 0);
  while (!holder.empty() && (holder.back() == '\n' || holder.back() == '\0')) holder.pop_back();
  return holder.empty() ? "a process that has not yet named itself" : holder;
}

// Takes the lock (`mode` LOCK_EX, or LOCK_SH to probe) on the open lock file `fd`, or closes
// it and throws (naming the holder).
void lock_or_throw(int fd, const std::string& run_dir, const std::string& path, int mode) {
  if (::flock(fd, mode | LOCK_NB) == 0) return;
  const int error = errno;
  const std::string holder = error == EWOULDBLOCK ? holder_of(fd) : "";
  ::close(fd);
  SHARDLORA_CHECK(error != EWOULDBLOCK, run_dir, " is in use by another run (", holder, "; lock ", path,
                  "): wait for it to end, or choose another output.dir");
  throw Error(path + ": cannot lock the run directory: " + std::strerror(error) +
              " (a filesystem without file locks cannot hold a run directory)");
}

}  // namespace

void RunDirectoryLock::check_free(const std::string& run_dir) {
  const std::string path = run_dir + "/" + kFileName;
  // Read-write: NFS carries flock as a POSIX lock, and an exclusive one needs a writable descriptor.
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return;  // never locked (or not ours to probe: the constructor will say)
  // Shared: probes (every rank of a starting job runs one) do not collide with each other,
  // only with a holder's exclusive lock.
  lock_or_throw(fd, run_dir, path, LOCK_SH);
  ::close(fd);  // and with it the probe's lock
}

RunDirectoryLock::RunDirectoryLock(const std::string& run_dir) {
  create_directories(run_dir);
  const std::string path = run_dir + "/" + kFileName;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  SHARDLORA_CHECK(fd_ >= 0, path, ": cannot open the run directory's lock: ", std::strerror(errno));
  lock_or_throw(fd_, run_dir, path, LOCK_EX);  // a constructor that throws runs no destructor: fd_ is closed there
  const std::string holder = "host " + this_host() + " pid " + std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, holder.data(), holder.size(), 0) != static_cast<ssize_t>(holder.size())) {
    const std::string why = std::strerror(errno);
    ::close(fd_);
    fd_ = -1;
    throw Error(path + ": cannot write the lock's holder: " + why);
  }
}

RunDirectoryLock::~RunDirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the descriptor releases the flock
}

}  // namespace shardlora::io
