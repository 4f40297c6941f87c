#include "shardlora/nn/llama_config.h"

#include "shardlora/kernels/check.h"

namespace shardlora::nn {
namespace {

class Fields {
 public:
  Fields(const nlohmann::json& json, std::string file) : json_(json), file_(std::move(file)) {
    SHARDLORA_CHECK(json.is_object(), file_, ": not a JSON object");
  }

  int64_t positive_int(const char* key, std::optional<int64_t> fallback = std::nullopt) const {
    const auto it = json_.find(key);
    if (it == json_.end() || it->is_null()) {
      SHARDLORA_CHECK(fallback, file_, ": key '", key, "' is missing");
      return *fallback;
    }
    SHARDLORA_CHECK(it->is_number_integer() && it->get<int64_t>() > 0, file_, ": key '", key,
                    "' must be a positive integer, found ", it->dump());
    return it->get<int64_t>();
  }

  int64_t non_negative_int(const char* key, int64_t fallback) const {
    const auto it = json_.find(key);
    if (it == json_.end() || it->is_null()) return fallback;
    SHARDLORA_CHECK(it->is_number_integer() && it->get<int64_t>() >= 0, file_, ": key '", key,
                    "' must be a non-negative integer, found ", it->dump());
    return it->get<int64_t>();
  }

  double positive_number(const char* key, double fallback) const {
    const auto it = json_.find(key);
    if (it == json_.end() || it->is_null()) return fallback;
    SHARDLORA_CHECK(it->is_number() && it->get<double>() > 0, file_, ": key '", key, "' must be a positive number, found ",
                    it->dump());
    return it->get<double>();
  }

  bool boolean(const char* key, bool fallback) const {
    const auto it = json_.find(key);
    if (it == json_.end() || it->is_null()) return fallback;
    SHARDLORA_CHECK(it->is_boolean(), file_, ": key '", key, "' must be true or false, found ", it->dump());
    return it->get<bool>();
  }

  std::string string(const char* key, std::optional<std::string> fallback = std::nullopt) const {
    const auto it = json_.find(key);
    if (it == json_.end() || it->is_null()) {
      SHARDLORA_CHECK(fallback, file_, ": key '", key, "' is missing");
      return *fallback;
    }
    SHARDLORA_CHECK(it->is_string(), file_, ": key '", key, "' must be a string, found ", it->dump());
    return it->get<std::string>();
  }

  const nlohmann::json* object(const char* key) const {
    const auto it = json_.find(key);
    if (it == json_.end() || it->is_null()) return nullptr;
    SHARDLORA_CHECK(it->is_object(), file_, ": key '", key, "' must be an object, found ", it->dump());
    return &*it;
  }

  const std::string& file() const { return file_; }

 private:
  const nlohmann::json& json_;
  std::string file_;
};

}  // namespace

LlamaConfig parse_llama_config(const nlohmann::json& json, const std::string& file) {
  const Fields fields(json, file);
  LlamaConfig config;
  config.model_type = fields.string("model_type");
  SHARDLORA_CHECK(config.model_type == "llama" || config.model_type == "mistral" || config.model_type == "qwen2", file,
                  ": model_type '", config.model_type, "' is not supported (llama, mistral, qwen2)");
  config.vocab_size = fields.positive_int("vocab_size");
  config.hidden_size = fields.positive_int("hidden_size");
  config.intermediate_size = fields.positive_int("intermediate_size");
  config.num_hidden_layers = fields.positive_int("num_hidden_layers");
  config.num_attention_heads = fields.positive_int("num_attention_heads");
  config.num_key_value_heads = fields.positive_int("num_key_value_heads", config.num_attention_heads);
  SHARDLORA_CHECK(config.num_attention_heads % config.num_key_value_heads == 0, file, ": num_attention_heads (",
                  config.num_attention_heads, ") is not a multiple of num_key_value_heads (", config.num_key_value_heads, ")");
  if (json.contains("head_dim") && !json["head_dim"].is_null()) {
    config.head_dim = fields.positive_int("head_dim");
  } else {
    SHARDLORA_CHECK(config.hidden_size % config.num_attention_heads == 0, file, ": hidden_size (", config.hidden_size,
                    ") is not divisible by num_attention_heads (", config.num_attention_heads, ")");
    config.head_dim = config.hidden_size / config.num_attention_heads;
  }
  SHARDLORA_CHECK(config.head_dim % 2 == 0, file, ": head_dim ", config.head_dim, " must be even for rotary embeddings");
  config.max_position_embeddings = fields.positive_int("max_position_embeddings", 2048);
  config.rms_norm_eps = fields.positive_number("rms_norm_eps", 1e-6);
  config.rope_theta = fields.positive_number("rope_theta", 10000.0);
  config.tie_word_embeddings = fields.boolean("tie_word_embeddings", false);
  const std::string activation = fields.string("hidden_act", "silu");
  SHARDLORA_CHECK(activation == "silu", file, ": hidden_act '", activation, "' is not supported (silu)");
  if (config.model_type == "qwen2") {
    config.qkv_bias = true;
    // HF Qwen2: the window applies only with use_sliding_window, to layers >= max_window_layers.
    if (fields.boolean("use_sliding_window", false)) {
      config.sliding_window = fields.positive_int("sliding_window");
      config.first_sliding_layer = fields.non_negative_int("max_window_layers", 28);  // HF's default
    }
  } else {
    if (config.model_type == "mistral" && json.contains("sliding_window") && !json["sliding_window"].is_null()) {
      config.sliding_window = fields.positive_int("sliding_window");
    }
    config.qkv_bias = config.o_bias = fields.boolean("attention_bias", false);
    config.mlp_bias = fields.boolean("mlp_bias", false);
  }
  if (const nlohmann::json* scaling = fields.object("rope_scaling")) {
    const Fields rope(*scaling, file + ": rope_scaling");
    const std::string type = scaling->contains("rope_type") ? rope.string("rope_type") : rope.string("type");
    SHARDLORA_CHECK(type == "llama3", file, ": rope_scaling type '", type, "' is not supported (llama3)");
    Llama3RopeScaling llama3;
    llama3.factor = rope.positive_number("factor", llama3.factor);
    llama3.low_freq_factor = rope.positive_number("low_freq_factor", llama3.low_freq_factor);
    llama3.high_freq_factor = rope.positive_number("high_freq_factor", llama3.high_freq_factor);
    llama3.original_max_position_embeddings =
        rope.positive_int("original_max_position_embeddings", llama3.original_max_position_embeddings);
    SHARDLORA_CHECK(llama3.high_freq_factor > llama3.low_freq_factor, file,
                    ": rope_scaling high_freq_factor must exceed low_freq_factor");
    config.rope_scaling = llama3;
  }
  return config;
}

}  // namespace shardlora::nn
