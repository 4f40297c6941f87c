// An output directory assembled beside its final place (FINAL.partial-PID) and renamed in by
// commit(), so a failure or an interruption never leaves a half-written directory; destroyed
// uncommitted, it removes what it wrote. An existing directory is replaced only when
// `replace` is set. Files inside are written with DurableFile; commit() syncs the tree's
// directories before the rename and the parent after it, so a committed directory is
// complete on disk, not just in the page cache.
#pragma once

#include <string>

#include "shardlora/io/durable_file.h"

namespace shardlora::io {

// Suffix of a directory renamed out of the way before it is removed.
inline constexpr char kRemovingSuffix[] = ".old-";

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

// Removes a directory by renaming it out of the way first (DIR.old-PID, synced), then
// deleting it: an interruption never leaves a half-removed directory under its own name.
void remove_directory_durably(const std::string& dir);

// Error unless `out_dir` and the input `in` are apart: neither the same directory nor one
// inside the other (writing an output over its own input destroys it, --force or not).
void check_output_apart(const std::string& out_dir, const std::string& in, const std::string& what);

// Removes the entries of `dir` whose names carry kPartialSuffix or kRemovingSuffix: what
// writers interrupted by a kill left. The caller must know no writer is still at work
// (the run directory's lock).
void remove_stale_partials(const std::string& dir);

}  // namespace shardlora::io
