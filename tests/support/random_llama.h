// Tiny Llama-family configs with random weights held in memory, for model tests.
#pragma once

#include <torch/torch.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "shardlora/nn/llama.h"

namespace shardlora::testing {

using nn::LlamaConfig;
using nn::parse_llama_config;

using Weights = std::map<std::string, torch::Tensor>;

// head_dim 16 (hidden / heads) unless `fields` say otherwise (Qwen3's default is 128).
inline LlamaConfig tiny_config(const std::string& model_type, const nlohmann::json& fields = nlohmann::json::object()) {
  nlohmann::json json = {{"model_type", model_type}, {"vocab_size", 40}, {"hidden_size", 64}, {"intermediate_size", 96},
                         {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                         {"head_dim", 16}, {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0}};
  json.update(fields);
  return parse_llama_config(json, "test");
}

inline Weights random_weights(const LlamaConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  const auto normal = [](std::vector<int64_t> shape, double scale) { return torch::randn(shape) * scale; };
  Weights w;
  w["model.embed_tokens.weight"] = normal({c.vocab_size, c.hidden_size}, 1.0);
  w["model.norm.weight"] = 1 + normal({c.hidden_size}, 0.1);
  if (!c.tie_word_embeddings) w["lm_head.weight"] = normal({c.vocab_size, c.hidden_size}, 0.1);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    w[p + "input_layernorm.weight"] = 1 + normal({c.hidden_size}, 0.1);
    w[p + "post_attention_layernorm.weight"] = 1 + normal({c.hidden_size}, 0.1);
    for (const nn::DecoderLinear& linear : nn::decoder_linears(c)) w[p + linear.name + ".weight"] = normal({linear.out, linear.in}, 0.1);
    if (c.gemma) {
      w[p + "pre_feedforward_layernorm.weight"] = normal({c.hidden_size}, 0.1);  // Gemma's norms scale by 1 + weight
      w[p + "post_feedforward_layernorm.weight"] = normal({c.hidden_size}, 0.1);
    }
    if (c.qk_norm) {
      w[p + "self_attn.q_norm.weight"] = 1 + normal({c.head_dim}, 0.1);
      w[p + "self_attn.k_norm.weight"] = 1 + normal({c.head_dim}, 0.1);
    }
    if (c.qkv_bias) {
      for (const char* m : {"q", "k", "v"}) {
        const auto out = std::string(m) == "q" ? c.q_size() : c.kv_size();
        w[p + "self_attn." + m + "_proj.bias"] = normal({out}, 0.1);
      }
    }
    if (c.o_bias) w[p + "self_attn.o_proj.bias"] = normal({c.hidden_size}, 0.1);
  }
  return w;
}

inline quant::TensorLookup lookup_in(const Weights& weights) {
  return [&weights](const std::string& name) -> std::optional<torch::Tensor> {
    const auto it = weights.find(name);
    if (it == weights.end()) return std::nullopt;
    return it->second;
  };
}

}  // namespace shardlora::testing
