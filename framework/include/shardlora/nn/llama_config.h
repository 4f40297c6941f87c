// The Llama-family architecture as Hugging Face's config.json describes it: Llama 2 / 3 /
// 3.1 / 3.2 (rope_scaling "llama3"), Mistral (sliding window), Qwen2 (q/k/v bias), TinyLlama, SmolLM (tied
// embeddings). Parsing validates every field and names the file and key on error.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace shardlora::nn {

// rope_scaling {"rope_type": "llama3", ...} (Llama 3.1 / 3.2).
struct Llama3RopeScaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  std::string model_type;  // llama, mistral or qwen2
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // grouped-query attention; = heads when absent
  int64_t head_dim = 0;             // hidden_size / heads when absent
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<Llama3RopeScaling> rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2 always; Llama with attention_bias
  bool o_bias = false;    // Llama attention_bias
  bool mlp_bias = false;  // Llama mlp_bias
  // Sliding-window attention (Mistral; Qwen2 with use_sliding_window): layers from
  // first_sliding_layer on attend to the last `sliding_window` tokens only, themselves included.
  std::optional<int64_t> sliding_window;
  int64_t first_sliding_layer = 0;  // Qwen2's max_window_layers

  int64_t q_size() const { return num_attention_heads * head_dim; }
  int64_t kv_size() const { return num_key_value_heads * head_dim; }
  bool layer_uses_window(int64_t layer) const { return sliding_window && layer >= first_sliding_layer; }
};

// `file` names config.json in errors.
LlamaConfig parse_llama_config(const nlohmann::json& config, const std::string& file);

}  // namespace shardlora::nn
