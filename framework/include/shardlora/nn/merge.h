// `shardlora merge`: a PEFT adapter folded into its base model, written as a plain Hugging
// Face checkpoint (float, no quantization_config) that transformers loads like any model.
// Streams the base shard by shard; a bitsandbytes 4-bit base is dequantized weight by
// weight. Each adapted weight is W + scaling * B A computed in fp32 by the same code the
// model uses (AdaptedLinear::merged_weight), then cast to the output dtype.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>

namespace shardlora::nn {

struct MergeOptions {
  c10::ScalarType dtype = c10::ScalarType::BFloat16;
  bool force = false;  // replace an existing output directory
};

struct MergeReport {
  int64_t merged_modules = 0;
  uint64_t bytes_out = 0;
};

// Every adapter tensor must find its module in the base with matching shapes, else an error
// naming the key; no output is left behind on error.
MergeReport merge_adapter(const std::string& base_dir, const std::string& adapter_dir, const std::string& out_dir,
                          const MergeOptions& options);

}  // namespace shardlora::nn
