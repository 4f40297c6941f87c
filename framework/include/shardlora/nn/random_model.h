// Random-initialised Llama-family models (Llama, Qwen3, Phi-3, Gemma 3) written as complete Hugging Face
// directories: config.json,
// safetensors weights (one file or two shards with an index), generation_config.json and,
// for vocabularies of at least 259 tokens, a byte-level tokenizer.json / tokenizer_config.json
// (ids 0-255 are the bytes, then <s>, </s>, <pad>). Backs `shardlora init-model`, the demo
// and the test fixtures.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

namespace shardlora::nn {

struct RandomModelSpec {
  int64_t vocab = 259, hidden = 64, intermediate = 128, layers = 2, heads = 4, kv_heads = 2;
  int64_t max_positions = 2048;
  std::string model_type = "llama";  // qwen3 (q_norm / k_norm), phi3 (qkv_proj, gate_up_proj) or gemma3_text
  int64_t head_dim = 0;              // 0: hidden / heads
  bool tie_embeddings = false;       // no lm_head.weight: the head is embed_tokens
  double partial_rotary_factor = 1.0;  // phi3
  double lm_head_std = 0.02;  // every other weight: N(0, 0.02) as HF initialises
  c10::ScalarType dtype = torch::kBFloat16;
  uint64_t seed = 0;
  bool sharded = false;
  bool tokenizer = true;  // write the byte-level tokenizer files (needs vocab >= 259)
};

constexpr int64_t kByteVocab = 256;  // then <s>, </s>, <pad>

// "tiny" (~0.1M parameters, for tests), "demo" (~0.9M, the built-in demo's base), "small"
// (~104M, for benchmarks), "qwen3-tiny" (~0.1M with Qwen3's features: head norms, a head_dim
// of its own, tied embeddings), "qwen3-0.6b" (Qwen3-0.6B's shape), "phi3-tiny" (~0.1M with
// Phi-3's fused projections and a partial rotary of 0.75) or "gemma3-tiny" (~0.3M, Gemma 3's
// layer: four norms, GELU, five local layers to a global one).
RandomModelSpec model_preset(const std::string& name);
const std::vector<std::string>& model_preset_names();

// Writes the directory (created if needed) and returns the tensors written, by name.
std::map<std::string, torch::Tensor> write_random_hf_model(const std::string& dir, const RandomModelSpec& spec);

}  // namespace shardlora::nn
