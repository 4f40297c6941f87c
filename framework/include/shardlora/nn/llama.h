// A decoder-only Llama-family transformer in libtorch, following Hugging Face's
// modeling_llama / modeling_qwen2 / modeling_qwen3: RMSNorm, rotary embeddings (rotate-half,
// every transformers rope type), Qwen3's RMSNorm of each q and k head before RoPE, Phi-3's
// fused qkv / gate_up projections and partial rotary,
// grouped-query attention, causal within each document of a packed sequence (per document,
// without a [T, T] mask; sliding windows in bands; a mask only for several tokens after a KV
// cache), SwiGLU MLP, optionally tied embeddings. The decoder Linears are frozen (4-bit or
// float) with LoRA adapters on the target modules; only the adapters are parameters.
#pragma once

#include <torch/torch.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "shardlora/dist/communicator.h"
#include "shardlora/nn/kv_cache.h"
#include "shardlora/nn/linear.h"
#include "shardlora/nn/llama_config.h"
#include "shardlora/nn/sharded_base.h"
#include "shardlora/nn/vocab_matrix.h"
#include "shardlora/quant/quant_state.h"

namespace shardlora::nn {

struct RotaryFrequencies {
  torch::Tensor inv_freq;
  double attention_scaling = 1.0;
};

struct ModelOptions {
  c10::ScalarType compute_dtype = torch::kBFloat16;
  torch::Device device = torch::kCPU;
  bool quantize_base = true;            // decoder Linears in 4 bits (QLoRA) or float (LoRA)
  quant::QuantConfig quant;             // for weights quantized on load
  LoraOptions lora;                     // r = 0: no adapters
  std::vector<std::string> target_modules = {"all-linear"};
  // Keep no activations inside decoder layers during training; backward recomputes them.
  bool activation_checkpointing = false;
  // NEFTune: in training mode only, noise on the input embeddings (see neftune_noise).
  double neftune_alpha = 0.0;
  // New tokens (data.add_special_tokens): the vocabulary grows to at least `vocab_size` (0:
  // the checkpoint's), rows past the checkpoint's starting as the mean of its rows, as
  // transformers' resize_token_embeddings(mean_resizing) centres them; the rows of
  // `trainable_tokens` in embed_tokens (and in an untied lm_head) are then trained in place of
  // the frozen rows, as PEFT's trainable_token_indices are (see vocab_matrix.h).
  int64_t vocab_size = 0;
  std::vector<int64_t> trainable_tokens;
  // PEFT's modules_to_save: "embed_tokens", "lm_head" (untied) trained whole, as fp32
  // parameters; a module trained whole takes no token rows.
  std::vector<std::string> modules_to_save;
  // Split the 4-bit decoder base over these ranks (distributed.strategy: shard; see
  // sharded_base.h); null: every rank holds it whole. Loading is then collective.
  dist::Communicator* shard_over = nullptr;
};

// Per-token inputs beside the ids, all [batch, seq] int64; defaults: positions 0..T-1 (after
// the cached tokens), one document.
struct ForwardOptions {
  std::optional<torch::Tensor> position_ids;
  std::optional<torch::Tensor> document_ids;  // attention never crosses a document boundary
  KvCache* cache = nullptr;                   // read and extended when given
};

// NEFTune's noise for embeddings [batch, seq, hidden], as transformers' neftune hook draws it:
// uniform in +-alpha / sqrt(seq * hidden), from the embeddings' device's default generator
// (which checkpoints save, so a resumed run draws the same noise).
torch::Tensor neftune_noise(const torch::Tensor& embeddings, double alpha);

// Whether LoRA target_modules (short names, or "all-linear") adapt `module` ("q_proj").
bool is_lora_target(const std::vector<std::string>& targets, const std::string& module);

class LlamaModelImpl : public torch::nn::Module {
 public:
  // weights: tensors by HF name (float, or bnb 4-bit for decoder Linears); `label` names
  // their origin in errors.
  LlamaModelImpl(const LlamaConfig& config, const quant::TensorLookup& weights, const ModelOptions& options,
                 const std::string& label);

  // input_ids [batch, seq] -> logits [batch, seq, vocab] in float32.
  torch::Tensor forward(const torch::Tensor& input_ids, const ForwardOptions& options = {});
  // The final normed hidden states [batch, seq, hidden] in the compute dtype: what the
  // logits are computed from (the chunked loss takes them with lm_head()).
  torch::Tensor hidden_states(const torch::Tensor& input_ids, const ForwardOptions& options = {});
  // embed_tokens and lm_head [vocab, hidden], each with its trained token rows, or the fp32
  // matrix of a module trained whole (a tied lm_head is embed_tokens).
  VocabMatrix embedding_matrix() const;
  VocabMatrix lm_head() const;
  // The trained rows [tokens, hidden] fp32 of embed_tokens and of an untied lm_head (undefined
  // without trainable tokens, or for a tied lm_head), and their token ids.
  const torch::Tensor& embed_token_rows() const { return embed_rows_; }
  const torch::Tensor& lm_head_token_rows() const { return lm_head_rows_; }
  // Empty when no rows train (every vocabulary matrix trained whole).
  std::vector<int64_t> trainable_tokens() const {
    return embed_rows_.defined() || lm_head_rows_.defined() ? options_.trainable_tokens : std::vector<int64_t>{};
  }
  // The matrices trained whole (lora.modules_to_save), by PEFT module name; fp32 parameters.
  const std::vector<std::pair<std::string, torch::Tensor>>& saved_modules() const { return saved_modules_; }
  // The logits of the last position only [batch, vocab] in float32 (what decoding needs;
  // a long prompt never holds [seq, vocab]).
  torch::Tensor next_token_logits(const torch::Tensor& input_ids, const ForwardOptions& options = {});

  // Decoder layer `index` on h [batch, seq, hidden] (used by forward and by its recomputation).
  // layout: which positions attend to which, either a boolean mask [batch | 1, 1, seq,
  // past + seq] or, without a mask, the rows' documents as int64 [segments, 3] (row, start,
  // length) on the host, causal within each (and within the window on windowed layers).
  torch::Tensor layer_forward(size_t index, const torch::Tensor& h, const torch::Tensor& cos, const torch::Tensor& sin,
                              const torch::Tensor& layout, KvCache* cache);

  const LlamaConfig& config() const { return config_; }
  torch::Device device() const { return options_.device; }
  void set_activation_checkpointing(bool enabled) { options_.activation_checkpointing = enabled; }
  // Every decoder Linear by its HF module path ("model.layers.0.self_attn.q_proj").
  const std::vector<std::pair<std::string, AdaptedLinear>>& linears() const { return linears_; }
  // The base split over ranks; null unless ModelOptions::shard_over was given.
  const ShardedBase* sharded_base() const { return sharded_.get(); }

 private:
  struct Layer {
    torch::Tensor input_norm, post_attention_norm;
    std::vector<AdaptedLinear> linears;  // decoder_linears(config) order
    torch::Tensor q_norm, k_norm;        // [head_dim] with LlamaConfig::qk_norm, else undefined
    torch::Tensor pre_feedforward_norm, post_feedforward_norm;  // Gemma 3's, else undefined
  };
  // q, k, v [batch, seq, heads * head_dim] as projected (split from qkv_proj where fused).
  std::array<torch::Tensor, 3> project_qkv(Layer& layer, const torch::Tensor& x);
  torch::Tensor mlp(Layer& layer, const torch::Tensor& x);
  // RoPE on the first rotary_dim of every head (all of it unless partial_rotary_factor < 1).
  torch::Tensor rotate(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads) const;
  torch::Tensor attention(Layer& layer, const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                          const torch::Tensor& layout, KvCache* cache, size_t index);
  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight) const;

  LlamaConfig config_;
  ModelOptions options_;
  torch::Tensor embed_, final_norm_;
  RotaryFrequencies rotary_;  // at length 0; dynamic and longrope recompute per forward
  RotaryFrequencies local_rotary_;  // Gemma 3's windowed layers (rope_local_base_freq); else undefined
  std::shared_ptr<DenseLinear> lm_head_;  // an untied lm_head not trained whole
  torch::Tensor token_index_, token_slots_, embed_rows_, lm_head_rows_;  // with trainable tokens
  torch::Tensor embed_whole_, lm_head_whole_;  // with modules_to_save
  std::vector<std::pair<std::string, torch::Tensor>> saved_modules_;
  std::vector<Layer> layers_;
  std::vector<std::pair<std::string, AdaptedLinear>> linears_;
  std::unique_ptr<ShardedBase> sharded_;
};
TORCH_MODULE(LlamaModel);

// Attention of q [B, H, T, D] over k, v [B, KV, T, D] within each document of a packed batch,
// causal, no [T, T] mask: `segments` [S, 3] (row, start, length) on the host, every position
// of every row in one segment, in order (SDPA with is_causal on libtorch 2.x, FlashAttention
// on a GPU; a batch of one document per row is one call). A `window` > 0 keeps each query to
// the last `window` positions (sliding-window layers), in bands of the window.
torch::Tensor segmented_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& segments,
                                  int64_t window = 0);

// The segments of `document_ids` [B, T] (runs of one id; padding, -1, is a run too), as
// segmented_attention takes them, and the longest.
std::pair<torch::Tensor, int64_t> document_segments(const torch::Tensor& document_ids);

// The default generators a model on `device` draws dropout masks from: the CPU's, and the
// accelerator's when it runs on one (what activation checkpointing and checkpoints save).
std::vector<at::Generator> dropout_generators(const torch::Device& device);

// Rotary inverse frequencies [head_dim / 2] in float32 and the factor on cos / sin, as
// transformers computes them for a sequence of `seq_len` positions (only dynamic and
// longrope scaling depend on it).
RotaryFrequencies rotary_frequencies(const LlamaConfig& config, int64_t seq_len = 0);
bool rotary_depends_on_length(const LlamaConfig& config);

}  // namespace shardlora::nn
