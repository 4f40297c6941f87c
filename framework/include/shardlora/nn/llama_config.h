// The Llama-family architecture as Hugging Face's config.json describes it: Llama 2 / 3 /
// 3.1 / 3.2 (rope_scaling "llama3", and linear / dynamic / yarn / longrope), Mistral (sliding window), Qwen2 (q/k/v bias), Qwen3
// (q/k norms per head), Phi-3 / Phi-4 (fused qkv and gate_up, partial rotary, longrope),
// TinyLlama, SmolLM (tied embeddings). A key the file leaves out takes
// the default of that model type's transformers config class (MistralConfig's window of
// 4096, Qwen3Config's head_dim of 128, ...); rope settings come as transformers 4 writes
// them (rope_theta, rope_scaling) or 5 (rope_parameters). Parsing validates every field and
// names the file and key on error.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace shardlora::nn {

// RoPE scaling as transformers' modeling_rope_utils applies it (rope_type):
//   linear    frequencies / factor
//   dynamic   NTK: the base grows with the sequence once it passes max_position_embeddings
//   yarn      frequencies blended between interpolated and original by dimension, cos / sin
//             scaled by attention_factor
//   longrope  frequencies divided by short_factor, or long_factor for sequences past
//             original_max_position_embeddings (Phi-3), cos / sin scaled by attention_factor
//   llama3    Llama 3.1's banded interpolation
struct RopeScaling {
  std::string type;
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;  // max_position_embeddings when not given
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  double attention_factor = 1.0;                          // yarn, longrope (resolved as transformers does)
  double beta_fast = 32, beta_slow = 1;                   // yarn
  bool truncate = true;                                   // yarn: round the correction range outward
  std::vector<double> short_factor, long_factor;          // longrope, head_dim / 2 each
};

struct LlamaConfig {
  std::string model_type;  // llama, mistral, qwen2, qwen3, phi3 or gemma3_text
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
  std::optional<RopeScaling> rope_scaling;  // none: plain RoPE (rope_type default)
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2 always; Llama with attention_bias
  bool o_bias = false;    // Llama attention_bias
  bool mlp_bias = false;  // Llama mlp_bias
  bool qk_norm = false;   // Qwen3: RMSNorm over each head of q and of k, before RoPE
  bool fused_projections = false;     // Phi-3 / Phi-4: qkv_proj and gate_up_proj, one Linear each
  // Gemma 3: RMSNorm scales by (1 + weight) in float32 before the cast, four norms a layer
  // (after attention and around the MLP), embeddings times sqrt(hidden_size), GELU-tanh
  // MLP, scores scaled by query_pre_attn_scalar^-1/2, and the windowed layers' own RoPE base.
  bool gemma = false;
  double query_pre_attn_scalar = 0;  // 0: head_dim
  double local_rope_theta = 0;       // windowed layers' base (rope_local_base_freq), plain RoPE; 0: as the others
  double partial_rotary_factor = 1.0;  // RoPE on the first head_dim * factor dims of a head (Phi-4-mini 0.75)
  // Sliding-window attention (Mistral; Qwen2 / Qwen3 with use_sliding_window): the windowed
  // layers attend to the last `sliding_window` tokens only, themselves included.
  std::optional<int64_t> sliding_window;
  std::vector<bool> windowed_layers;  // by layer (Qwen's layer_types); empty: every layer
  // The language model of a Gemma3ForConditionalGeneration checkpoint (model_type gemma3, the
  // text model's config in text_config): its modules are "model.language_model.*", and the
  // vision tower and projector are left unread.
  bool multimodal = false;

  int64_t rotary_dim() const { return static_cast<int64_t>(static_cast<double>(head_dim) * partial_rotary_factor); }
  int64_t q_size() const { return num_attention_heads * head_dim; }
  int64_t kv_size() const { return num_key_value_heads * head_dim; }
  bool layer_uses_window(int64_t layer) const {
    return sliding_window && (windowed_layers.empty() || windowed_layers[static_cast<size_t>(layer)]);
  }
};

// `file` names config.json in errors.
LlamaConfig parse_llama_config(const nlohmann::json& config, const std::string& file);

// Where the decoder's modules are, as transformers (>= 4.52) names them and PEFT keys its
// adapters: "model." for a causal LM, "model.language_model." inside a multimodal model.
std::string decoder_prefix(const LlamaConfig& config);

// A multimodal checkpoint's tensors are named either way: "model.language_model.X" and
// "lm_head.weight" as transformers >= 4.52 saves them, or "language_model.model.X" and
// "language_model.lm_head.weight" as Gemma 3 was published. The published name of a module
// name (nullopt if it has none), and the module name of either.
std::optional<std::string> published_multimodal_name(const std::string& module_name);
std::string module_name_of(const std::string& checkpoint_name);
// The vision tower's and the projector's tensors, in either naming.
bool is_vision_tensor(const std::string& checkpoint_name);

// A Linear of a decoder layer: its module path inside the layer, as transformers (and PEFT's
// target_modules, by the last part) name it, and its shape.
struct DecoderLinear {
  std::string name;  // "self_attn.q_proj"
  int64_t in, out;
  bool bias;
};

// The layer's Linears in forward order: q, k, v, o, gate, up, down; Phi-3's qkv (q, k, v
// stacked by rows), o, gate_up (gate then up), down.
std::vector<DecoderLinear> decoder_linears(const LlamaConfig& config);

}  // namespace shardlora::nn
