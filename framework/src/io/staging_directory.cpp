#include "shardlora/io/staging_directory.h"

#include <unistd.h>

#include <filesystem>

#include "shardlora/kernels/check.h"

namespace shardlora::io {

namespace fs = std::filesystem;

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
