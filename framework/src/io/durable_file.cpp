#include "shardlora/io/durable_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "shardlora/kernels/check.h"

namespace shardlora::io {
namespace {

std::string reason() { return std::strerror(errno); }

// pwrite until done; false (errno set) on a failure other than an interruption.
bool write_fully(int fd, const void* data, uint64_t bytes, uint64_t offset) {
  const auto* cursor = static_cast<const uint8_t*>(data);
  while (bytes > 0) {
    const ssize_t n = ::pwrite(fd, cursor, std::min<uint64_t>(bytes, 1u << 30), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;
      return false;
    }
    cursor += n;
    offset += static_cast<uint64_t>(n);
    bytes -= static_cast<uint64_t>(n);
  }
  return true;
}

std::string parent_of(const std::string& path) {
  const std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

}  // namespace

DurableFile::DurableFile(std::string path) : path_(std::move(path)), partial_(path_ + kPartialSuffix + std::to_string(::getpid())) {
  fd_ = ::open(partial_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SHARDLORA_CHECK(fd_ >= 0, partial_, ": cannot create: ", reason());
}

DurableFile::~DurableFile() {
  if (fd_ < 0) return;
  ::close(fd_);
  ::unlink(partial_.c_str());
}

void DurableFile::write(const void* data, uint64_t bytes) {
  SHARDLORA_CHECK(fd_ >= 0, path_, ": written after it was published");
  SHARDLORA_CHECK(write_fully(fd_, data, bytes, offset_), partial_, ": cannot write: ", reason());
  offset_ += bytes;
}

void DurableFile::publish() {
  SHARDLORA_CHECK(fd_ >= 0, path_, ": published twice");
  const int fd = fd_;
  fd_ = -1;  // from here on, every failure path removes the partial file itself
  const auto fail = [&](const char* what) {
    const std::string why = reason();
    ::unlink(partial_.c_str());
    throw Error(partial_ + ": cannot " + what + ": " + why);
  };
  if (::fsync(fd) != 0) {
    ::close(fd);
    fail("sync");
  }
  if (::close(fd) != 0) fail("close");
  if (::rename(partial_.c_str(), path_.c_str()) != 0) fail(("rename to " + path_).c_str());
  fsync_directory(parent_of(path_));
}

void write_file_atomically(const std::string& path, const std::string& content) {
  DurableFile file(path);
  file.write(content);
  file.publish();
}

void copy_file_durably(const std::string& from, const std::string& to) {
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  SHARDLORA_CHECK(in >= 0, from, ": cannot open: ", reason());
  try {
    DurableFile out(to);
    std::vector<char> chunk(1 << 20);
    while (true) {
      const ssize_t n = ::read(in, chunk.data(), chunk.size());
      if (n < 0 && errno == EINTR) continue;
      SHARDLORA_CHECK(n >= 0, from, ": cannot read: ", reason());
      if (n == 0) break;
      out.write(chunk.data(), static_cast<uint64_t>(n));
    }
    out.publish();
  } catch (...) {
    ::close(in);
    throw;
  }
  ::close(in);
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  SHARDLORA_CHECK(fd >= 0, dir, ": cannot open the directory to sync it: ", reason());
  const bool synced = ::fsync(fd) == 0 || errno == EINVAL || errno == ENOTSUP;  // some filesystems cannot sync directories
  const std::string why = synced ? "" : reason();
  ::close(fd);
  SHARDLORA_CHECK(synced, dir, ": cannot sync the directory: ", why);
}

void create_directories(const std::string& dir) {
  SHARDLORA_CHECK(!dir.empty(), "an output directory path is empty");
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  SHARDLORA_CHECK(!error, dir, ": cannot create the directory: ", error.message());
}

AppendFile::AppendFile(std::string path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  SHARDLORA_CHECK(fd_ >= 0, path_, ": cannot open for appending: ", reason());
}

AppendFile::~AppendFile() {
  if (fd_ >= 0) ::close(fd_);
}

void AppendFile::append(const std::string& text) {
  const char* cursor = text.data();
  size_t left = text.size();
  while (left > 0) {
    const ssize_t n = ::write(fd_, cursor, left);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) errno = EIO;
    SHARDLORA_CHECK(n > 0, path_, ": cannot write: ", reason());
    cursor += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace shardlora::io
