#include "shardlora/io/staging_directory.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "shardlora/kernels/check.h"

namespace shardlora::io {
namespace {

namespace fs = std::filesystem;

std::string parent_of(const std::string& path) {
  const std::string parent = fs::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

void rename_or_throw(const std::string& from, const std::string& to) {
  std::error_code error;
  fs::rename(from, to, error);
  SHARDLORA_CHECK(!error, from, ": cannot rename to ", to, ": ", error.message());
}

void remove_all_or_throw(const std::string& path) {
  std::error_code error;
  fs::remove_all(path, error);
  SHARDLORA_CHECK(!error, path, ": cannot remove: ", error.message());
}

}  // namespace

StagingDirectory::StagingDirectory(std::string final_dir, bool replace) : final_(std::move(final_dir)) {
  SHARDLORA_CHECK(replace || !fs::exists(final_), final_, ": already exists (pass --force to replace it)");
  staging_ = final_ + kPartialSuffix + std::to_string(::getpid());
  remove_all_or_throw(staging_);
  create_directories(staging_);
}

StagingDirectory::~StagingDirectory() {
  std::error_code ignored;
  if (!committed_) fs::remove_all(staging_, ignored);
}

void StagingDirectory::commit() {
  for (const auto& entry : fs::recursive_directory_iterator(staging_)) {
    if (entry.is_directory()) fsync_directory(entry.path().string());
  }
  fsync_directory(staging_);
  const std::string previous = final_ + kRemovingSuffix + std::to_string(::getpid());
  const bool replacing = fs::exists(final_);
  if (replacing) rename_or_throw(final_, previous);
  std::error_code error;
  fs::rename(staging_, final_, error);
  if (error) {
    std::error_code ignored;
    if (replacing) fs::rename(previous, final_, ignored);  // the old directory back under its name, not left as a leftover
    throw Error(staging_ + ": cannot rename to " + final_ + ": " + error.message());
  }
  committed_ = true;
  fsync_directory(parent_of(final_));
  if (replacing) remove_all_or_throw(previous);
}

void remove_directory_durably(const std::string& dir) {
  if (!fs::exists(dir)) return;
  const std::string removing = dir + kRemovingSuffix + std::to_string(::getpid());
  rename_or_throw(dir, removing);
  fsync_directory(parent_of(dir));
  remove_all_or_throw(removing);
}

void check_output_apart(const std::string& out_dir, const std::string& in, const std::string& what) {
  const fs::path out = fs::weakly_canonical(fs::absolute(out_dir)), input = fs::weakly_canonical(fs::absolute(in));
  const auto within = [](const fs::path& inner, const fs::path& outer) {
    const auto [end, _] = std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end());
    return end == outer.end();
  };
  SHARDLORA_CHECK(!within(out, input) && !within(input, out), out_dir, ": the output would overwrite ", what, " ", in,
                  " (the same directory, or one inside the other): choose another output directory");
}

void remove_stale_partials(const std::string& dir) {
  std::error_code error;
  if (!fs::is_directory(dir, error)) return;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.find(kPartialSuffix) != std::string::npos || name.find(kRemovingSuffix) != std::string::npos) {
      remove_all_or_throw(entry.path().string());
    }
  }
}

}  // namespace shardlora::io
