#include "shardlora/nn/llama_config.h"

#include <cmath>
#include <map>

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

  double non_negative_number(const char* key, double fallback) const {
    const auto it = json_.find(key);
    if (it == json_.end() || it->is_null()) return fallback;
    SHARDLORA_CHECK(it->is_number() && it->get<double>() >= 0, file_, ": key '", key, "' must be a non-negative number, found ",
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

// rope_theta and the scaling: transformers 5's rope_parameters {rope_type, rope_theta, ...}
// or 4's top-level rope_theta with rope_scaling {rope_type | type, ...}.
void parse_rope(const Fields& fields, LlamaConfig* config) {
  config->rope_theta = fields.positive_number("rope_theta", 10000.0);
  config->partial_rotary_factor = fields.positive_number("partial_rotary_factor", 1.0);
  const auto check_rotary_dim = [&] {
    SHARDLORA_CHECK(config->partial_rotary_factor <= 1 && config->rotary_dim() >= 2 && config->rotary_dim() % 2 == 0, fields.file(),
                    ": partial_rotary_factor ", config->partial_rotary_factor, " of head_dim ", config->head_dim,
                    " must leave an even number of rotated dimensions");
  };
  const char* key = fields.object("rope_parameters") ? "rope_parameters" : "rope_scaling";
  const nlohmann::json* scaling = fields.object(key);
  if (!scaling) return check_rotary_dim();
  const Fields rope(*scaling, fields.file() + ": " + key);
  if (std::string(key) == "rope_parameters") {
    config->rope_theta = rope.positive_number("rope_theta", config->rope_theta);
    config->partial_rotary_factor = rope.positive_number("partial_rotary_factor", config->partial_rotary_factor);
  }
  check_rotary_dim();
  std::string type = scaling->contains("rope_type") ? rope.string("rope_type") : rope.string("type", "default");
  // Phi3Config reads the types of its first releases, "su" and "yarn", as longrope.
  if (config->model_type == "phi3" && (type == "su" || type == "yarn")) type = "longrope";
  if (type == "default") return;
  SHARDLORA_CHECK(type == "llama3" || type == "linear" || type == "dynamic" || type == "yarn" || type == "longrope", fields.file(),
                  ": ", key, " type '", type, "' is not supported (default, linear, dynamic, yarn, longrope, llama3)");
  RopeScaling s;
  s.type = type;
  // Phi-3 keeps original_max_position_embeddings beside max_position_embeddings, not in rope_scaling.
  s.original_max_position_embeddings = rope.positive_int(
      "original_max_position_embeddings", fields.positive_int("original_max_position_embeddings", config->max_position_embeddings));
  const double context_ratio =
      static_cast<double>(config->max_position_embeddings) / static_cast<double>(s.original_max_position_embeddings);
  if (type == "llama3") {
    s.factor = rope.positive_number("factor", 8.0);
    s.low_freq_factor = rope.positive_number("low_freq_factor", s.low_freq_factor);
    s.high_freq_factor = rope.positive_number("high_freq_factor", s.high_freq_factor);
    s.original_max_position_embeddings = rope.positive_int("original_max_position_embeddings", 8192);
    SHARDLORA_CHECK(s.high_freq_factor > s.low_freq_factor, fields.file(), ": ", key, " high_freq_factor must exceed low_freq_factor");
  } else if (type == "linear" || type == "dynamic") {
    s.factor = rope.positive_number("factor", 0);
    SHARDLORA_CHECK(s.factor > 0, fields.file(), ": ", key, ": key 'factor' is missing");
  } else if (type == "yarn") {
    s.factor = rope.positive_number("factor", context_ratio);
    const auto mscale = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
    const double m = rope.positive_number("mscale", 0), m_all = rope.positive_number("mscale_all_dim", 0);
    s.attention_factor = rope.positive_number("attention_factor", m > 0 && m_all > 0 ? mscale(s.factor, m) / mscale(s.factor, m_all)
                                                                                    : mscale(s.factor, 1));
    s.beta_fast = rope.positive_number("beta_fast", 32);
    s.beta_slow = rope.positive_number("beta_slow", 1);
    s.truncate = rope.boolean("truncate", true);
  } else {  // longrope
    s.factor = rope.positive_number("factor", context_ratio);
    const double default_attention =
        s.factor <= 1 ? 1.0 : std::sqrt(1 + std::log(s.factor) / std::log(static_cast<double>(s.original_max_position_embeddings)));
    s.attention_factor = rope.positive_number("attention_factor", default_attention);
    for (auto [name, factors] : {std::pair{"short_factor", &s.short_factor}, std::pair{"long_factor", &s.long_factor}}) {
      const auto it = scaling->find(name);
      SHARDLORA_CHECK(it != scaling->end() && it->is_array() && static_cast<int64_t>(it->size()) == config->rotary_dim() / 2,
                      fields.file(), ": ", key, ": key '", name, "' must list one number per rotated pair, ", config->rotary_dim() / 2);
      for (const auto& value : *it) {
        SHARDLORA_CHECK(value.is_number() && value.get<double>() > 0, fields.file(), ": ", key, ": key '", name,
                        "' holds ", value.dump(), ", not a positive number");
        factors->push_back(value.get<double>());
      }
    }
  }
  config->rope_scaling = s;
}

// What each model type's transformers config class sets for a key config.json leaves out
// (only the keys read here; num_key_value_heads and head_dim left out follow the heads).
const nlohmann::json& hf_defaults(const std::string& model_type, const std::string& file) {
  static const std::map<std::string, nlohmann::json> defaults = {
      {"llama",
       {{"vocab_size", 32000}, {"hidden_size", 4096}, {"intermediate_size", 11008}, {"num_hidden_layers", 32},
        {"num_attention_heads", 32}, {"max_position_embeddings", 2048}, {"rms_norm_eps", 1e-6}, {"rope_theta", 10000.0},
        {"tie_word_embeddings", false}, {"attention_bias", false}, {"mlp_bias", false}}},
      {"mistral",
       {{"vocab_size", 32000}, {"hidden_size", 4096}, {"intermediate_size", 14336}, {"num_hidden_layers", 32},
        {"num_attention_heads", 32}, {"num_key_value_heads", 8}, {"max_position_embeddings", 4096 * 32}, {"rms_norm_eps", 1e-6},
        {"rope_theta", 10000.0}, {"tie_word_embeddings", false}, {"sliding_window", 4096}}},
      {"qwen2",
       {{"vocab_size", 151936}, {"hidden_size", 4096}, {"intermediate_size", 22016}, {"num_hidden_layers", 32},
        {"num_attention_heads", 32}, {"num_key_value_heads", 32}, {"max_position_embeddings", 32768}, {"rms_norm_eps", 1e-6},
        {"rope_theta", 10000.0}, {"tie_word_embeddings", false}, {"use_sliding_window", false}, {"sliding_window", 4096},
        {"max_window_layers", 28}}},
      {"qwen3",
       {{"vocab_size", 151936}, {"hidden_size", 4096}, {"intermediate_size", 22016}, {"num_hidden_layers", 32},
        {"num_attention_heads", 32}, {"num_key_value_heads", 32}, {"head_dim", 128}, {"max_position_embeddings", 32768},
        {"rms_norm_eps", 1e-6}, {"rope_theta", 10000.0}, {"tie_word_embeddings", false}, {"attention_bias", false},
        {"use_sliding_window", false}, {"sliding_window", 4096}, {"max_window_layers", 28}}},
      // Phi-3 and Phi-4 (model_type phi3).
      {"phi3",
       {{"vocab_size", 32064}, {"hidden_size", 3072}, {"intermediate_size", 8192}, {"num_hidden_layers", 32},
        {"num_attention_heads", 32}, {"max_position_embeddings", 4096}, {"original_max_position_embeddings", 4096},
        {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0}, {"tie_word_embeddings", false}, {"sliding_window", nullptr},
        {"resid_pdrop", 0.0}, {"embd_pdrop", 0.0}, {"partial_rotary_factor", 1.0}}},
      // Gemma3ForCausalLM.
      {"gemma3_text",
       {{"vocab_size", 262208}, {"hidden_size", 2304}, {"intermediate_size", 9216}, {"num_hidden_layers", 26},
        {"num_attention_heads", 8}, {"num_key_value_heads", 4}, {"head_dim", 256}, {"hidden_activation", "gelu_pytorch_tanh"},
        {"max_position_embeddings", 131072}, {"rms_norm_eps", 1e-6}, {"tie_word_embeddings", true}, {"rope_theta", 1000000.0},
        {"attention_bias", false}, {"query_pre_attn_scalar", 256}, {"sliding_window", 4096}, {"final_logit_softcapping", nullptr},
        {"attn_logit_softcapping", nullptr}, {"rope_local_base_freq", 10000.0}, {"sliding_window_pattern", 6}}},
  };
  const auto it = defaults.find(model_type);
  SHARDLORA_CHECK(it != defaults.end(), file, ": model_type '", model_type,
                  "' is not supported (llama, mistral, qwen2, qwen3, phi3, gemma3_text, gemma3)");
  return it->second;
}

// layer_types ("sliding_attention" / "full_attention", one per layer) as windowed flags.
std::vector<bool> layer_types_windowed(const nlohmann::json& json, const Fields& fields, int64_t layers) {
  const nlohmann::json& types = json["layer_types"];
  SHARDLORA_CHECK(types.is_array() && static_cast<int64_t>(types.size()) == layers, fields.file(),
                  ": key 'layer_types' must list one type per layer (", layers, "), found ", types.dump());
  std::vector<bool> windowed;
  for (const auto& type : types) {
    SHARDLORA_CHECK(type == "sliding_attention" || type == "full_attention", fields.file(), ": key 'layer_types' holds ",
                    type.dump(), " (sliding_attention, full_attention)");
    windowed.push_back(type == "sliding_attention");
  }
  return windowed;
}

// Gemma3TextConfig: the window on the "sliding_attention" layers (layer_types, or every
// layer but each sliding_window_pattern-th), their RoPE base rope_local_base_freq; no
// soft-capping in Gemma 3's configs (Gemma 2's is refused until it is computed).
void parse_gemma3(const nlohmann::json& json, const Fields& fields, LlamaConfig* config) {
  config->query_pre_attn_scalar = fields.positive_number("query_pre_attn_scalar", 256);
  config->local_rope_theta = fields.positive_number("rope_local_base_freq", 10000.0);
  for (const char* key : {"final_logit_softcapping", "attn_logit_softcapping"}) {
    SHARDLORA_CHECK(!json.contains(key) || json.at(key).is_null(), fields.file(), ": key '", key, "' is ", json.value(key, nlohmann::json()).dump(),
                    ": soft-capping is not supported (Gemma 3 leaves it off)");
  }
  if (!json.contains("sliding_window") || json.at("sliding_window").is_null()) return;
  config->sliding_window = fields.positive_int("sliding_window");
  if (json.contains("layer_types") && !json["layer_types"].is_null()) {
    config->windowed_layers = layer_types_windowed(json, fields, config->num_hidden_layers);
    return;
  }
  const int64_t pattern = fields.positive_int("sliding_window_pattern");
  for (int64_t layer = 0; layer < config->num_hidden_layers; ++layer) config->windowed_layers.push_back((layer + 1) % pattern != 0);
}

// Qwen's windowed layers: layer_types when given ("sliding_attention" / "full_attention"),
// else those from max_window_layers on.
std::vector<bool> qwen_windowed_layers(const nlohmann::json& json, const Fields& fields, int64_t layers) {
  if (const auto types = json.find("layer_types"); types != json.end() && !types->is_null()) {
    return layer_types_windowed(json, fields, layers);
  }
  std::vector<bool> windowed;
  const int64_t first = fields.non_negative_int("max_window_layers", 0);
  for (int64_t layer = 0; layer < layers; ++layer) windowed.push_back(layer >= first);
  return windowed;
}

}  // namespace

namespace {

bool starts_with(const std::string& text, const std::string& prefix) { return text.compare(0, prefix.size(), prefix) == 0; }

}  // namespace

std::string decoder_prefix(const LlamaConfig& config) { return config.multimodal ? "model.language_model." : "model."; }

std::optional<std::string> published_multimodal_name(const std::string& module_name) {
  if (starts_with(module_name, "model.language_model.")) return "language_model.model." + module_name.substr(21);
  if (starts_with(module_name, "lm_head.")) return "language_model." + module_name;
  return std::nullopt;
}

std::string module_name_of(const std::string& checkpoint_name) {
  if (starts_with(checkpoint_name, "language_model.model.")) return "model.language_model." + checkpoint_name.substr(21);
  if (starts_with(checkpoint_name, "language_model.lm_head.")) return checkpoint_name.substr(15);
  return checkpoint_name;
}

bool is_vision_tensor(const std::string& name) {
  for (const char* prefix : {"vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector."}) {
    if (starts_with(name, prefix)) return true;
  }
  return false;
}

LlamaConfig parse_llama_config(const nlohmann::json& given, const std::string& file) {
  SHARDLORA_CHECK(given.is_object(), file, ": not a JSON object");
  if (given.contains("model_type") && given["model_type"] == "gemma3") {
    // Gemma3ForConditionalGeneration: a Gemma3TextConfig in text_config (its defaults for what it leaves out).
    SHARDLORA_CHECK(given.contains("text_config") && given["text_config"].is_object(), file,
                    ": a gemma3 (multimodal) config needs a text_config object");
    nlohmann::json text = given["text_config"];
    text["model_type"] = "gemma3_text";
    LlamaConfig config = parse_llama_config(text, file + " (text_config)");
    config.multimodal = true;
    return config;
  }
  LlamaConfig config;
  config.model_type = Fields(given, file).string("model_type");
  nlohmann::json json = hf_defaults(config.model_type, file);
  for (const auto& [key, value] : given.items()) json[key] = value;  // an explicit null stays null: None in transformers
  const Fields fields(json, file);
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
  config.max_position_embeddings = fields.positive_int("max_position_embeddings");
  config.rms_norm_eps = fields.positive_number("rms_norm_eps", 1e-6);
  config.tie_word_embeddings = fields.boolean("tie_word_embeddings", false);
  config.gemma = config.model_type == "gemma3_text";
  const char* activation_key = config.gemma ? "hidden_activation" : "hidden_act";
  const std::string activation = fields.string(activation_key, config.gemma ? "gelu_pytorch_tanh" : "silu");
  const char* expected_activation = config.gemma ? "gelu_pytorch_tanh" : "silu";
  SHARDLORA_CHECK(activation == expected_activation, file, ": ", activation_key, " '", activation, "' is not supported (",
                  expected_activation, ")");
  const bool qwen = config.model_type == "qwen2" || config.model_type == "qwen3";
  if (qwen) {
    // transformers: the window only with use_sliding_window, on the windowed layers.
    if (fields.boolean("use_sliding_window", false) && !json["sliding_window"].is_null()) {
      config.sliding_window = fields.positive_int("sliding_window");
      config.windowed_layers = qwen_windowed_layers(json, fields, config.num_hidden_layers);
    }
  } else if ((config.model_type == "mistral" || config.model_type == "phi3") && !json["sliding_window"].is_null()) {
    config.sliding_window = fields.positive_int("sliding_window");  // every layer
  }
  if (config.model_type == "phi3") {
    config.fused_projections = true;
    // Phi3DecoderLayer drops out its residual branches and Phi3Model its embeddings in training.
    for (const char* key : {"resid_pdrop", "embd_pdrop"}) {
      SHARDLORA_CHECK(fields.non_negative_number(key, 0) == 0, file, ": key '", key, "' is ", json[key].dump(),
                      ": dropout outside the adapters is not supported (LoRA's own is lora.dropout)");
    }
  }
  if (config.model_type == "qwen2") {
    config.qkv_bias = true;  // Qwen2Attention: q, k, v with bias, o without
  } else if (config.model_type != "mistral" && config.model_type != "phi3") {
    config.qkv_bias = config.o_bias = fields.boolean("attention_bias", false);
    config.mlp_bias = config.model_type == "llama" && fields.boolean("mlp_bias", false);
  }
  config.qk_norm = config.model_type == "qwen3" || config.gemma;
  if (config.gemma) parse_gemma3(json, fields, &config);
  parse_rope(fields, &config);
  return config;
}

std::vector<DecoderLinear> decoder_linears(const LlamaConfig& c) {
  const int64_t h = c.hidden_size, i = c.intermediate_size;
  if (c.fused_projections) {
    return {{"self_attn.qkv_proj", h, c.q_size() + 2 * c.kv_size(), false}, {"self_attn.o_proj", c.q_size(), h, false},
            {"mlp.gate_up_proj", h, 2 * i, false}, {"mlp.down_proj", i, h, false}};
  }
  return {{"self_attn.q_proj", h, c.q_size(), c.qkv_bias}, {"self_attn.k_proj", h, c.kv_size(), c.qkv_bias},
          {"self_attn.v_proj", h, c.kv_size(), c.qkv_bias}, {"self_attn.o_proj", c.q_size(), h, c.o_bias},
          {"mlp.gate_proj", h, i, c.mlp_bias},           {"mlp.up_proj", h, i, c.mlp_bias},
          {"mlp.down_proj", i, h, c.mlp_bias}};
}

}  // namespace shardlora::nn
