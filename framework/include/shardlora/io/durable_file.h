// The one way the project writes a file: beside its final path (PATH.partial-PID), every
// write and the close checked, the data fsynced before the rename that publishes it, then
// the directory fsynced so the new name survives a crash too. Readers see the old file or
// the new one, never a part; a failure (a full disk, a quota) is an Error naming the file,
// and the partial file is removed. No libtorch here: the safetensors writer uses it.
#pragma once

#include <cstdint>
#include <string>

namespace shardlora::io {

// Suffix of files and directories being written; a leftover one is stale once its writer is gone.
inline constexpr char kPartialSuffix[] = ".partial-";

class DurableFile {
 public:
  explicit DurableFile(std::string path);
  ~DurableFile();  // unpublished: the partial file is removed
  DurableFile(const DurableFile&) = delete;
  DurableFile& operator=(const DurableFile&) = delete;

  // Writes at the current offset and advances it.
  void write(const void* data, uint64_t bytes);
  void write(const std::string& text) { write(text.data(), text.size()); }
  // Moves the offset (a writer that fills a header in last); a gap reads as zeros.
  void seek(uint64_t offset) { offset_ = offset; }
  // fsync, close, rename over the final path, fsync of its directory.
  void publish();
  const std::string& path() const { return path_; }

 private:
  std::string path_, partial_;
  int fd_ = -1;
  uint64_t offset_ = 0;
};

void write_file_atomically(const std::string& path, const std::string& content);

// Copies a regular file durably (in chunks: it may be large).
void copy_file_durably(const std::string& from, const std::string& to);

// Makes the directory's entries (files created, renamed or removed in it) durable.
void fsync_directory(const std::string& dir);

// std::filesystem::create_directories with an error that names the path and the reason.
void create_directories(const std::string& dir);

// An append-only text file (metrics.jsonl): every write checked, flushed to the kernel per call.
class AppendFile {
 public:
  explicit AppendFile(std::string path);
  ~AppendFile();
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;
  void append(const std::string& text);

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace shardlora::io
