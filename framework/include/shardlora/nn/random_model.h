// Random-initialised Llama models written as complete Hugging Face directories: config.json,
// safetensors weights (one file or two shards with an index), generation_config.json and,
// for vocabularies of at least 259 tokens, a byte-level tokenizer.json / tokenizer_config.json
// (ids 0-255 are the bytes, then <s>, </s>, <pad>). Backs `shardlora init-model`, the demo
// and the test fixtures.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>

namespace shardlora::nn {

struct RandomModelSpec {
  int64_t vocab = 259, hidden = 64, intermediate = 128, layers = 2, heads = 4, kv_heads = 2;
  int64_t max_positions = 2048;
  double lm_head_std = 0.02;  // every other weight: N(0, 0.02) as HF initialises
  c10::ScalarType dtype = torch::kBFloat16;
  uint64_t seed = 0;
  bool sharded = false;
  bool tokenizer = true;  // write the byte-level tokenizer files (needs vocab >= 259)
};

constexpr int64_t kByteVocab = 256;  // then <s>, </s>, <pad>

// "tiny" (~0.1M parameters, for tests), "demo" (~0.9M, the built-in demo's base) or
// "small" (~104M, for benchmarks).
RandomModelSpec model_preset(const std::string& name);

// Writes the directory (created if needed) and returns the tensors written, by name.
std::map<std::string, torch::Tensor> write_random_hf_model(const std::string& dir, const RandomModelSpec& spec);

}  // namespace shardlora::nn
