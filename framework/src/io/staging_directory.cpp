#include "shardlora/io/staging_directory.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <filesystem>

#include "shardlora/kernels/check.h"

namespace shardlora::io {

namespace fs = std::filesystem;

void write_file_atomically(const std::string& path, const std::string& content) {
  const std::string partial = path + ".partial-" + std::to_string(::getpid());
  const int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SHARDLORA_CHECK(fd >= 0, partial, ": cannot create: ", std::strerror(errno));
  size_t written = 0;
  while (written < content.size()) {
    const ssize_t n = ::write(fd, content.data() + written, content.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string reason = std::strerror(errno);
      ::close(fd);
      ::unlink(partial.c_str());
      throw Error(partial + ": cannot write: " + reason);
    }
    written += static_cast<size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced || ::rename(partial.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    ::unlink(partial.c_str());
    throw Error(path + ": cannot write: " + reason);
  }
}

StagingDirectory::StagingDirectory(std::string final_dir, bool replace) : final_(std::move(final_dir)) {
  SHARDLORA_CHECK(replace || !fs::exists(final_), final_, ": already exists (pass --force to replace it)");
  staging_ = final_ + ".partial-" + std::to_string(::getpid());
  fs::remove_all(staging_);
  fs::create_directories(staging_);
}

StagingDirectory::~StagingDirectory() {
  std::error_code ignored;
  if (!committed_) fs::remove_all(staging_, ignored);
}

void StagingDirectory::commit() {
  const std::string previous = final_ + ".old-" + std::to_string(::getpid());
  const bool replacing = fs::exists(final_);
  if (replacing) fs::rename(final_, previous);
  fs::rename(staging_, final_);
  committed_ = true;
  if (replacing) fs::remove_all(previous);
}

}  // namespace shardlora::io
