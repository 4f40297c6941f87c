// Autoregressive generation with a KV cache: greedy, or sampling with temperature, top-k and
// top-p; stops on an end-of-sequence token or after max_new_tokens. Backs `shardlora generate`.
#pragma once

#include <cstdint>
#include <vector>

#include "shardlora/nn/llama.h"

namespace shardlora::nn {

struct GenerationOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
  std::vector<int64_t> eos_token_ids;
  uint64_t seed = 0;
};

// Returns the generated tokens (the prompt excluded; an end-of-sequence token included).
std::vector<int64_t> generate(LlamaModel& model, const std::vector<int64_t>& prompt, const GenerationOptions& options);

}  // namespace shardlora::nn
