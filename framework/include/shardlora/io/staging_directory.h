// An output directory assembled beside its final place and renamed in by commit(), so a
// failure or an interruption never leaves a half-written directory; destroyed uncommitted,
// it removes what it wrote. An existing directory is replaced only when `replace` is set.
#pragma once

#include <string>

namespace shardlora::io {

// Writes `content` to `path` through a temporary file beside it, fsynced and renamed over
// it: readers see the old file or the new one, never a part.
void write_file_atomically(const std::string& path, const std::string& content);

class StagingDirectory {
 public:
  StagingDirectory(std::string final_dir, bool replace);
  ~StagingDirectory();
  StagingDirectory(const StagingDirectory&) = delete;
  StagingDirectory& operator=(const StagingDirectory&) = delete;

  const std::string& dir() const { return staging_; }
  std::string path(const std::string& file) const { return staging_ + "/" + file; }
  void commit();

 private:
  std::string final_, staging_;
  bool committed_ = false;
};

}  // namespace shardlora::io
