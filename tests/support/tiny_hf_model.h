// Writes a small random Llama-shaped Hugging Face model directory for tests: config.json,
// safetensors weights (one file, or two shards with an index), a tokenizer file to copy.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>

namespace shardlora::testing {

struct TinyModelOptions {
  int64_t hidden = 64, intermediate = 128, kv_hidden = 32, vocab = 48, layers = 2;
  c10::ScalarType dtype = c10::ScalarType::Float;
  bool sharded = false;
  uint64_t seed = 7;
};

// Returns the tensors written, by name (values N(0, 0.02), norms 1).
std::map<std::string, torch::Tensor> write_tiny_hf_model(const std::string& dir, const TinyModelOptions& options = {});

// A PEFT adapter for the model in `base_dir` on q_proj, v_proj and down_proj, r = 4, with
// A and B drawn from N(0, scale^2) (non-zero B, so it changes the model), as if trained; with
// `dora`, DoRA magnitudes scaled by U(0.5, 1.5) from their start.
void write_random_adapter(const std::string& base_dir, const std::string& adapter_dir, double alpha, double scale,
                          uint64_t seed, bool dora = false);

// Logits [2, 7] in float32 of fixed random ids below `vocab`: the model in `model_dir` as
// stored (a float base stays float), with the PEFT adapter in `adapter_dir` unless empty.
torch::Tensor model_logits(const std::string& model_dir, const std::string& adapter_dir, int64_t vocab);

}  // namespace shardlora::testing
