// Streams a Hugging Face checkpoint into a new directory one tensor at a time: shards in,
// same shards out, each input tensor mapped from the memory map through a callback that
// returns its output tensors, the shard index rebuilt, config.json rewritten by another
// callback, every other file copied. Each shard's header is validated up front, so a
// corrupt last shard fails before any output is written; the output directory appears
// only when complete (a staging directory renamed into place).
#pragma once

#include <torch/types.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/io/safetensors.h"

namespace shardlora::io {

// Any tensor of the checkpoint by name (a view into its memory map), for callbacks whose
// output depends on several tensors (bitsandbytes' quant-state companions).
using CheckpointLookup = std::function<std::optional<torch::Tensor>(const std::string& name)>;

struct CheckpointRewrite {
  // Output names and ranks an input tensor will produce (bounds each shard's header).
  std::function<std::vector<std::pair<std::string, size_t>>(const TensorInfo& input)> plan;
  // The output tensors of one input tensor, in the order `plan` named them; `where` names
  // the file and tensor for errors.
  std::function<std::vector<std::pair<std::string, torch::Tensor>>(const TensorInfo& input, const torch::Tensor& view,
                                                                   const CheckpointLookup& lookup, const std::string& where)>
      rewrite;
  std::function<nlohmann::json(nlohmann::json config)> config;
  // Files written in place of the checkpoint's files of the same name (or beside them).
  std::vector<std::string> replaced_files;
  bool force = false;  // replace an existing output directory
  std::function<void(uint64_t done, uint64_t total, const std::string& tensor)> on_progress;
};

struct CheckpointRewriteReport {
  uint64_t bytes_in = 0, bytes_out = 0;
};

CheckpointRewriteReport rewrite_checkpoint(const HfCheckpoint& checkpoint, const std::string& out_dir,
                                           const CheckpointRewrite& rewrite);

}  // namespace shardlora::io
