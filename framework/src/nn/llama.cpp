#include "shardlora/nn/llama.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "shardlora/kernels/check.h"
#include "shardlora/nn/flash_attention.h"
#include "shardlora/nn/fused_ops.h"
#include "shardlora/tensor/device_copy.h"

namespace shardlora::nn {

std::vector<at::Generator> dropout_generators(const torch::Device& device) {
  std::vector<at::Generator> generators = {at::detail::getDefaultCPUGenerator()};
  if (!device.is_cpu()) generators.push_back(at::globalContext().defaultGenerator(device));
  return generators;
}

namespace {

std::string shape_text(c10::IntArrayRef shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

torch::Tensor require(const quant::TensorLookup& weights, const std::string& name, std::vector<int64_t> shape,
                      const std::string& label) {
  const auto found = weights(name);
  SHARDLORA_CHECK(found, label, ": missing tensor '", name, "'");
  SHARDLORA_CHECK(found->sizes().vec() == shape, label, ": tensor '", name, "' has shape ", shape_text(found->sizes()),
                  ", the config implies ", shape_text(shape));
  return *found;
}

// K / V heads repeated for every query head (what attention without native GQA needs).
torch::Tensor repeat_kv(const torch::Tensor& kv, int64_t heads) {
  return kv.size(1) == heads ? kv : kv.repeat_interleave(heads / kv.size(1), 1);
}

// q [B, H, T, D] over k, v [B, KV, T', D] where `allowed` [B|1, 1, T, T'] says (HF eager
// attention on libtorch 1.13: scores in the compute dtype, softmax in float32).
torch::Tensor masked_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& allowed) {
  const int64_t heads = q.size(1);
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, repeat_kv(k, heads), repeat_kv(v, heads), allowed);
#else
  torch::Tensor scores = torch::matmul(q, repeat_kv(k, heads).transpose(2, 3)) / std::sqrt(static_cast<double>(q.size(-1)));
  scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  return torch::matmul(torch::softmax(scores, -1, torch::kFloat32).to(q.scalar_type()), repeat_kv(v, heads));
#endif
}

// q [B, H, T, D] over every key of k, v [B, KV, T', D] (one decoded token over its cache):
// no mask, and each K / V head shared by its group of query heads without copies. Scores and
// softmax as masked_attention on libtorch 1.13.
torch::Tensor attention_over_every_key(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const int64_t batch = q.size(0), heads = q.size(1), length = q.size(2), dim = q.size(3), kv_heads = k.size(1);
  const torch::Tensor grouped = q.reshape({batch, kv_heads, heads / kv_heads * length, dim});
  const torch::Tensor scores = torch::matmul(grouped, k.transpose(2, 3)) / std::sqrt(static_cast<double>(dim));
  return torch::matmul(torch::softmax(scores, -1, torch::kFloat32).to(q.scalar_type()), v).view({batch, heads, length, dim});
}

// Causal attention of q over k, v of the same length, no mask in memory: on libtorch 2.x SDPA
// with is_causal (FlashAttention on a GPU) and, from 2.5, K / V heads shared without copies.
torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
  return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, std::nullopt, /*enable_gqa=*/k.size(1) != q.size(1));
#elif TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, repeat_kv(k, q.size(1)), repeat_kv(v, q.size(1)), {}, 0.0, /*is_causal=*/true);
#else
  const int64_t length = q.size(2);
  const auto longs = torch::TensorOptions(torch::kInt64).device(q.device());
  const torch::Tensor causal = torch::arange(length, longs).view({1, -1}).le(torch::arange(length, longs).view({-1, 1}));
  return masked_attention(q, k, v, causal.view({1, 1, length, length}));
#endif
}

// Causal attention within `window` positions (j > i - window) of q over k, v of the same
// length, with no [T, T] mask: FlashAttention's window where it applies; else queries in
// blocks of `window`, each over the keys from window - 1 before its first query to its last,
// where the band i <= j <= i + window - 1 of one [window, 2 window - 1] mask says which
// (memory and work O(T window), not O(T^2)).
torch::Tensor windowed_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t window) {
  const int64_t length = q.size(2);
  if (length <= window) return causal_attention(q, k, v);
  if (flash_window_attention_applies(q)) return flash_window_attention(q, k, v, window);
  const auto longs = torch::TensorOptions(torch::kInt64).device(q.device());
  const torch::Tensor offset = torch::arange(2 * window - 1, longs).view({1, -1}) - torch::arange(window, longs).view({-1, 1});
  const torch::Tensor band = offset.ge(0).logical_and(offset.lt(window));
  std::vector<torch::Tensor> blocks;
  for (int64_t first = 0; first < length; first += window) {
    const int64_t rows = std::min(window, length - first), keys_first = std::max<int64_t>(0, first - window + 1);
    const int64_t keys = first + rows - keys_first;
    const torch::Tensor mask = band.narrow(0, 0, rows).narrow(1, keys_first - (first - window + 1), keys);
    blocks.push_back(masked_attention(q.narrow(2, first, rows), k.narrow(2, keys_first, keys), v.narrow(2, keys_first, keys),
                                      mask.view({1, 1, rows, keys})));
  }
  return torch::cat(blocks, 2);
}

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

std::vector<torch::Tensor> rng_states(std::vector<at::Generator>& generators) {
  std::vector<torch::Tensor> states;
  for (at::Generator& generator : generators) {
    std::lock_guard<std::mutex> lock(generator.mutex());
    states.push_back(generator.get_state());
  }
  return states;
}

void set_rng_states(std::vector<at::Generator>& generators, const std::vector<torch::Tensor>& states) {
  for (size_t i = 0; i < generators.size(); ++i) {
    std::lock_guard<std::mutex> lock(generators[i].mutex());
    generators[i].set_state(states[i]);
  }
}

// Activation checkpointing for one decoder layer, as torch.utils.checkpoint with
// use_reentrant=True: forward keeps only the layer input; backward recomputes the layer with
// autograd on (restoring the RNG states, so dropout masks repeat) and back-propagates
// through it, which accumulates the adapters' gradients directly.
struct CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& h, LlamaModelImpl* model, int64_t index,
                               const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& layout) {
    ctx->save_for_backward({h});
    ctx->saved_data["model"] = reinterpret_cast<int64_t>(model);
    ctx->saved_data["index"] = index;
    ctx->saved_data["cos"] = cos;
    ctx->saved_data["sin"] = sin;
    ctx->saved_data["layout"] = layout;
    std::vector<at::Generator> generators = dropout_generators(h.device());
    ctx->saved_data["rng"] = rng_states(generators);
    return model->layer_forward(static_cast<size_t>(index), h, cos, sin, layout, nullptr);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    auto* model = reinterpret_cast<LlamaModelImpl*>(ctx->saved_data["model"].toInt());
    const torch::Tensor h = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    std::vector<at::Generator> generators = dropout_generators(h.device());
    const std::vector<torch::Tensor> states_now = rng_states(generators);
    set_rng_states(generators, ctx->saved_data["rng"].toTensorVector());
    torch::Tensor out;
    {
      torch::AutoGradMode enable(true);
      out = model->layer_forward(static_cast<size_t>(ctx->saved_data["index"].toInt()), h,
                                 ctx->saved_data["cos"].toTensor(), ctx->saved_data["sin"].toTensor(),
                                 ctx->saved_data["layout"].toTensor(), nullptr);
    }
    set_rng_states(generators, states_now);
    torch::autograd::backward({out}, {grad_outputs[0]});
    return {h.grad(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor segmented_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& segments,
                                  int64_t window) {
  const int64_t batch = q.size(0), seq = q.size(2);
  const auto s = segments.accessor<int64_t, 2>();
  const auto document_attention = [window](const torch::Tensor& dq, const torch::Tensor& dk, const torch::Tensor& dv) {
    return window > 0 ? windowed_attention(dq, dk, dv, window) : causal_attention(dq, dk, dv);
  };
  if (segments.size(0) == batch) return document_attention(q, k, v);
  std::vector<torch::Tensor> rows;
  for (int64_t i = 0; i < segments.size(0);) {
    const int64_t row = s[i][0];
    std::vector<torch::Tensor> pieces;
    for (; i < segments.size(0) && s[i][0] == row; ++i) {
      const auto slice = [&](const torch::Tensor& t) { return t.narrow(0, row, 1).narrow(2, s[i][1], s[i][2]); };
      pieces.push_back(document_attention(slice(q), slice(k), slice(v)));
    }
    rows.push_back(pieces.size() == 1 ? pieces[0] : torch::cat(pieces, 2));
  }
  SHARDLORA_CHECK(static_cast<int64_t>(rows.size()) == batch && rows[0].size(2) == seq, "attention segments do not tile the batch");
  return torch::cat(rows, 0);
}

std::pair<torch::Tensor, int64_t> document_segments(const torch::Tensor& document_ids) {
  const torch::Tensor docs = document_ids.to(torch::kCPU, torch::kInt64).contiguous();
  const auto d = docs.accessor<int64_t, 2>();
  std::vector<int64_t> flat;
  int64_t longest = 0;
  for (int64_t row = 0; row < docs.size(0); ++row) {
    for (int64_t start = 0, end = 0; start < docs.size(1); start = end) {
      while (end < docs.size(1) && d[row][end] == d[row][start]) ++end;
      flat.insert(flat.end(), {row, start, end - start});
      longest = std::max(longest, end - start);
    }
  }
  return {torch::tensor(flat, torch::kInt64).view({-1, 3}), longest};
}

torch::Tensor neftune_noise(const torch::Tensor& embeddings, double alpha) {
  SHARDLORA_CHECK(embeddings.dim() == 3, "neftune_noise: embeddings must be [batch, seq, hidden]");
  const double magnitude = alpha / std::sqrt(static_cast<double>(embeddings.size(1) * embeddings.size(2)));
  return torch::zeros_like(embeddings).uniform_(-magnitude, magnitude);
}

bool is_lora_target(const std::vector<std::string>& targets, const std::string& module) {
  return std::find(targets.begin(), targets.end(), "all-linear") != targets.end() ||
         std::find(targets.begin(), targets.end(), module) != targets.end();
}

bool rotary_depends_on_length(const LlamaConfig& config) {
  return config.rope_scaling && (config.rope_scaling->type == "dynamic" || config.rope_scaling->type == "longrope");
}

// transformers' ROPE_INIT_FUNCTIONS, in float32 as there.
RotaryFrequencies rotary_frequencies(const LlamaConfig& config, int64_t seq_len) {
  const int64_t dim = config.rotary_dim();
  const torch::Tensor exponents = torch::arange(0, dim, 2, torch::kInt64).to(torch::kFloat32) / static_cast<double>(dim);
  const torch::Tensor inv_freq = 1.0 / torch::pow(config.rope_theta, exponents);
  if (!config.rope_scaling) return {inv_freq, 1.0};
  const RopeScaling& s = *config.rope_scaling;
  if (s.type == "linear") return {inv_freq / s.factor, 1.0};
  if (s.type == "dynamic") {
    // Stateless: the base for this sequence (transformers keeps the largest seen so far).
    const double length = static_cast<double>(std::max(seq_len, config.max_position_embeddings));
    const double max_positions = static_cast<double>(config.max_position_embeddings);
    const double base = config.rope_theta * std::pow(s.factor * length / max_positions - (s.factor - 1), dim / (dim - 2.0));
    return {1.0 / torch::pow(base, exponents), 1.0};
  }
  if (s.type == "longrope") {
    const auto& factors = seq_len > s.original_max_position_embeddings ? s.long_factor : s.short_factor;
    return {1.0 / (torch::tensor(factors, torch::kFloat64).to(torch::kFloat32) * torch::pow(config.rope_theta, exponents)),
            s.attention_factor};
  }
  if (s.type == "yarn") {
    const double base = config.rope_theta, original = static_cast<double>(s.original_max_position_embeddings);
    const auto correction_dim = [&](double rotations) {
      return dim * std::log(original / (rotations * 2 * M_PI)) / (2 * std::log(base));
    };
    double low = correction_dim(s.beta_fast), high = correction_dim(s.beta_slow);
    if (s.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;
    const torch::Tensor pos_freqs = torch::pow(base, exponents);
    const torch::Tensor ramp = ((torch::arange(dim / 2, torch::kFloat32) - low) / (high - low)).clamp(0, 1);
    const torch::Tensor extrapolation = 1 - ramp;
    return {(1.0 / (s.factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation, s.attention_factor};
  }
  // llama3: HF _compute_llama3_parameters.
  const double old_context = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / s.low_freq_factor;
  const double high_freq_wavelen = old_context / s.high_freq_factor;
  const torch::Tensor wavelen = 2 * M_PI / inv_freq;
  torch::Tensor scaled = torch::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  const torch::Tensor smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  const torch::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  const torch::Tensor medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
  return {torch::where(medium, smoothed, scaled), 1.0};
}

LlamaModelImpl::LlamaModelImpl(const LlamaConfig& config, const quant::TensorLookup& weights, const ModelOptions& options,
                               const std::string& label)
    : config_(config), options_(options) {
  const std::vector<DecoderLinear> shapes = decoder_linears(config);
  std::vector<std::string> modules;  // PEFT's names: the last part of each path
  std::string listed;
  for (const DecoderLinear& linear : shapes) {
    modules.push_back(linear.name.substr(linear.name.find('.') + 1));
    listed += modules.back() + ", ";
  }
  for (const auto& target : options.target_modules) {
    const bool known = target == "all-linear" || std::find(modules.begin(), modules.end(), target) != modules.end();
    SHARDLORA_CHECK(known, "unknown LoRA target module '", target, "' for ", config.model_type, " (", listed, "all-linear)");
  }
  const auto dtype = options.compute_dtype;
  const auto to_model = [&](const torch::Tensor& t) { return t.to(options.device, dtype); };
  const int64_t hidden = config.hidden_size;
  const std::string decoder = decoder_prefix(config);
  embed_ = to_model(require(weights, decoder + "embed_tokens.weight", {config.vocab_size, hidden}, label));
  final_norm_ = to_model(require(weights, decoder + "norm.weight", {hidden}, label));
  rotary_ = rotary_frequencies(config);
  rotary_.inv_freq = rotary_.inv_freq.to(options.device);
  if (config.local_rope_theta > 0) {
    LlamaConfig local = config;
    local.rope_theta = config.local_rope_theta;
    local.rope_scaling.reset();  // Gemma 3 scales the global layers' RoPE only
    local_rotary_ = rotary_frequencies(local);
    local_rotary_.inv_freq = local_rotary_.inv_freq.to(options.device);
  }
  torch::Tensor lm_head = config.tie_word_embeddings ? torch::Tensor() : to_model(require(weights, "lm_head.weight", {config.vocab_size, hidden}, label));
  if (options.vocab_size > config.vocab_size) {
    embed_ = grow_vocabulary(embed_, options.vocab_size);
    if (lm_head.defined()) lm_head = grow_vocabulary(lm_head, options.vocab_size);
    config_.vocab_size = options.vocab_size;
  }
  const auto saved = [&](const std::string& module) {
    return std::find(options.modules_to_save.begin(), options.modules_to_save.end(), module) != options.modules_to_save.end();
  };
  for (const std::string& module : options.modules_to_save) {
    SHARDLORA_CHECK(module == "embed_tokens" || module == "lm_head", label, ": modules_to_save takes embed_tokens and lm_head, not '",
                    module, "'");
    SHARDLORA_CHECK(module == "embed_tokens" || lm_head.defined(), label,
                    ": lm_head is tied to embed_tokens (tie_word_embeddings): train embed_tokens alone");
  }
  if (saved("embed_tokens")) {
    embed_whole_ = register_parameter("embed_tokens", embed_.to(torch::kFloat32));
    saved_modules_.emplace_back("embed_tokens", embed_whole_);
  }
  if (saved("lm_head")) {
    lm_head_whole_ = register_parameter("lm_head", lm_head.to(torch::kFloat32));
    saved_modules_.emplace_back("lm_head", lm_head_whole_);
  }
  if (!options.trainable_tokens.empty() && !(saved("embed_tokens") && (saved("lm_head") || !lm_head.defined()))) {
    std::set<int64_t> seen;
    for (const int64_t id : options.trainable_tokens) {
      SHARDLORA_CHECK(id >= 0 && id < config_.vocab_size, label, ": trainable token id ", id, " is outside the vocabulary of ",
                      config_.vocab_size);
      SHARDLORA_CHECK(seen.insert(id).second, label, ": trainable token id ", id, " is listed twice");
    }
    token_index_ = torch::tensor(options.trainable_tokens, torch::kInt64).to(options.device);
    token_slots_ = token_slots(token_index_, config_.vocab_size);
    if (!saved("embed_tokens")) embed_rows_ = register_parameter("embed_token_rows", embed_.index_select(0, token_index_).to(torch::kFloat32));
    if (lm_head.defined() && !saved("lm_head")) {
      lm_head_rows_ = register_parameter("lm_head_token_rows", lm_head.index_select(0, token_index_).to(torch::kFloat32));
    }
  }
  // A module trained whole computes from its fp32 parameter alone: its frozen copy goes
  // (embed_ stays as an empty tensor of the embeddings' dtype and device).
  if (lm_head.defined() && !lm_head_whole_.defined()) lm_head_ = std::make_shared<DenseLinear>(lm_head);
  if (embed_whole_.defined()) embed_ = torch::empty({0, hidden}, embed_.options());

  // A decoder Linear's weight as the checkpoint holds it (bnb 4-bit or float), shape-checked.
  const auto read_weight = [&](const std::string& prefix, const std::string& module, int64_t out, int64_t in, bool bias) {
    LayerWeight weight;
    weight.name = prefix + module + ".weight";
    if (bias) weight.bias = to_model(require(weights, prefix + module + ".bias", {out}, label));
    if (quant::is_bnb_4bit_weight(weight.name, weights)) {
      quant::QuantState state = quant::from_bnb_tensors(weight.name, weights, label);
      SHARDLORA_CHECK(state.shape == std::vector<int64_t>({out, in}), label, ": tensor '", weight.name, "' has shape ",
                      shape_text(state.shape), ", the config implies ", shape_text({out, in}));
      weight.prequantized = std::move(state);
    } else {
      weight.float_weight = require(weights, weight.name, {out, in}, label);
    }
    return weight;
  };
  const auto whole_base = [&](LayerWeight weight) -> std::shared_ptr<FrozenLinear> {
    if (auto& state = weight.prequantized) {
      state->codes = state->codes.to(options.device);
      state->absmax = state->absmax.to(options.device);
      state->code = state->code.to(options.device);
      if (state->nested) state->nested_absmax = state->nested_absmax.to(options.device);
      return std::make_shared<Linear4bit>(std::move(*state), weight.bias);
    }
    const torch::Tensor tensor = weight.float_weight.to(options.device);
    if (!options.quantize_base) return std::make_shared<DenseLinear>(tensor.to(dtype), weight.bias);
    try {
      return std::make_shared<Linear4bit>(quant::quantize(tensor, options.quant), weight.bias);
    } catch (const Error& error) {
      throw Error(label + ": tensor '" + weight.name + "': " + error.what());
    }
  };
  const auto adapt = [&](const std::string& path, std::shared_ptr<FrozenLinear> base) {
    LoraOptions lora = options.lora;
    if (!is_lora_target(options.target_modules, path.substr(path.rfind('.') + 1))) lora.r = 0;
    AdaptedLinear linear(std::move(base), lora);
    linear->to(options.device);  // initialised on the CPU: the same adapters on every device
    // Module names cannot hold dots: register by index, keep the HF path in linears_.
    register_module("linear" + std::to_string(linears_.size()), linear);
    linears_.emplace_back(path, linear);
    return linear;
  };

  if (options.shard_over) {
    SHARDLORA_CHECK(options.quantize_base, "distributed.strategy shard splits a 4-bit base; with model.quantization.type none use "
                    "distributed.strategy replicate");
    sharded_ = std::make_unique<ShardedBase>(*options.shard_over, options.quant, options.device, config.num_hidden_layers);
  }
  for (int64_t index = 0; index < config.num_hidden_layers; ++index) {
    const std::string prefix = decoder + "layers." + std::to_string(index) + ".";
    std::vector<LayerWeight> layer_weights;
    for (const DecoderLinear& linear : shapes) layer_weights.push_back(read_weight(prefix, linear.name, linear.out, linear.in, linear.bias));
    std::vector<std::shared_ptr<FrozenLinear>> bases;
    if (sharded_) {
      for (auto& base : sharded_->add_layer(index, layer_weights, label)) bases.push_back(std::move(base));
    } else {
      for (auto& weight : layer_weights) bases.push_back(whole_base(std::move(weight)));
    }
    Layer layer;
    layer.input_norm = to_model(require(weights, prefix + "input_layernorm.weight", {hidden}, label));
    layer.post_attention_norm = to_model(require(weights, prefix + "post_attention_layernorm.weight", {hidden}, label));
    for (size_t i = 0; i < shapes.size(); ++i) layer.linears.push_back(adapt(prefix + shapes[i].name, bases[i]));
    if (config.qk_norm) {
      layer.q_norm = to_model(require(weights, prefix + "self_attn.q_norm.weight", {config.head_dim}, label));
      layer.k_norm = to_model(require(weights, prefix + "self_attn.k_norm.weight", {config.head_dim}, label));
    }
    if (config.gemma) {
      layer.pre_feedforward_norm = to_model(require(weights, prefix + "pre_feedforward_layernorm.weight", {hidden}, label));
      layer.post_feedforward_norm = to_model(require(weights, prefix + "post_feedforward_layernorm.weight", {hidden}, label));
    }
    layers_.push_back(std::move(layer));
  }
}

torch::Tensor LlamaModelImpl::rms_norm(const torch::Tensor& x, const torch::Tensor& weight) const {
  if (!config_.gemma) return nn::rms_norm(x, weight, config_.rms_norm_eps);
  // Gemma3RMSNorm: normalize and scale by (1 + weight) in float32, then cast.
  const torch::Tensor x32 = x.to(torch::kFloat32);
  return (x32 * torch::rsqrt(x32.pow(2).mean(-1, true) + config_.rms_norm_eps) * (1 + weight.to(torch::kFloat32))).to(x.scalar_type());
}

std::array<torch::Tensor, 3> LlamaModelImpl::project_qkv(Layer& layer, const torch::Tensor& x) {
  if (!config_.fused_projections) return {layer.linears[0]->forward(x), layer.linears[1]->forward(x), layer.linears[2]->forward(x)};
  const torch::Tensor qkv = layer.linears[0]->forward(x);
  const int64_t q = config_.q_size(), kv = config_.kv_size();
  return {qkv.narrow(-1, 0, q), qkv.narrow(-1, q, kv), qkv.narrow(-1, q + kv, kv)};
}

torch::Tensor LlamaModelImpl::mlp(Layer& layer, const torch::Tensor& x) {
  if (config_.gemma) {  // Gemma3MLP: gelu_pytorch_tanh(gate) * up
    return layer.linears[6]->forward(torch::gelu(layer.linears[4]->forward(x), "tanh") * layer.linears[5]->forward(x));
  }
  if (!config_.fused_projections) {
    return layer.linears[6]->forward(swiglu(layer.linears[4]->forward(x), layer.linears[5]->forward(x)));
  }
  // Phi3MLP: gate_up_proj's output holds the gate, then up.
  const torch::Tensor gate_up = layer.linears[2]->forward(x);
  const int64_t inter = config_.intermediate_size;
  return layer.linears[3]->forward(swiglu(gate_up.narrow(-1, 0, inter), gate_up.narrow(-1, inter, inter)));
}

torch::Tensor LlamaModelImpl::rotate(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads) const {
  const int64_t rotary = config_.rotary_dim(), dim = config_.head_dim;
  if (rotary == dim) return apply_rope(x, cos, sin, heads);
  // Phi-3's partial rotary: rotate-half within the first `rotary` dims, the rest passed on.
  const torch::Tensor per_head = x.view({x.size(0), x.size(1), heads, dim});
  const torch::Tensor rotated = apply_rope(per_head.narrow(-1, 0, rotary).reshape({x.size(0), x.size(1), heads * rotary}), cos, sin, heads);
  return torch::cat({rotated.view({x.size(0), x.size(1), heads, rotary}), per_head.narrow(-1, rotary, dim - rotary)}, -1)
      .view({x.size(0), x.size(1), heads * dim});
}

torch::Tensor LlamaModelImpl::attention(Layer& layer, const torch::Tensor& x, const torch::Tensor& cos,
                                        const torch::Tensor& sin, const torch::Tensor& layout, KvCache* cache, size_t index) {
  const int64_t batch = x.size(0), seq = x.size(1), heads = config_.num_attention_heads,
                kv_heads = config_.num_key_value_heads, dim = config_.head_dim;
  auto [q_projected, k_projected, v_projected] = project_qkv(layer, x);
  // Qwen3 normalises each head of q and k (over head_dim) before the rotation.
  const auto head_normed = [&](const torch::Tensor& projected, const torch::Tensor& norm, int64_t count) {
    return norm.defined() ? rms_norm(projected.view({batch, seq, count, dim}), norm).view({batch, seq, count * dim}) : projected;
  };
  torch::Tensor q = rotate(head_normed(q_projected, layer.q_norm, heads), cos, sin, heads).view({batch, seq, heads, dim}).transpose(1, 2);
  // Attention scales scores by head_dim^-1/2; Gemma 3 by query_pre_attn_scalar^-1/2.
  if (config_.query_pre_attn_scalar > 0 && config_.query_pre_attn_scalar != dim) {
    q = q * std::sqrt(static_cast<double>(dim) / config_.query_pre_attn_scalar);
  }
  torch::Tensor k =
      rotate(head_normed(k_projected, layer.k_norm, kv_heads), cos, sin, kv_heads).view({batch, seq, kv_heads, dim}).transpose(1, 2);
  torch::Tensor v = v_projected.reshape({batch, seq, kv_heads, dim}).transpose(1, 2);
  const int64_t window = config_.layer_uses_window(static_cast<int64_t>(index)) ? config_.sliding_window.value_or(0) : 0;
  torch::Tensor mask = layout;
  if (cache) {
    const int64_t held = cache->held(index);
    std::tie(k, v) = cache->append(index, k, v);
    // A later token attends to the window - 1 tokens before it at most (HF's sliding-window
    // cache keeps as many).
    if (window > 0) cache->keep_last(index, window - 1);
    // The mask's columns of the held tokens (a windowed layer's last ones only).
    if (held > 0 && mask.defined()) mask = mask.narrow(3, cache->length - held, held + seq);
  }
  torch::Tensor out;
  if (!mask.defined()) out = attention_over_every_key(q, k, v);
  else if (mask.scalar_type() == torch::kBool) out = masked_attention(q, k, v, mask);
  else out = segmented_attention(q, k, v, mask, window);
  return layer.linears[config_.fused_projections ? 1 : 3]->forward(out.transpose(1, 2).reshape({batch, seq, heads * dim}));
}

torch::Tensor LlamaModelImpl::layer_forward(size_t index, const torch::Tensor& h, const torch::Tensor& cos,
                                            const torch::Tensor& sin, const torch::Tensor& layout, KvCache* cache) {
  Layer& layer = layers_[index];
  if (config_.gemma) {  // Gemma3DecoderLayer: each branch normed on the way in and on the way out
    const torch::Tensor mid =
        h + rms_norm(attention(layer, rms_norm(h, layer.input_norm), cos, sin, layout, cache, index), layer.post_attention_norm);
    return mid + rms_norm(mlp(layer, rms_norm(mid, layer.pre_feedforward_norm)), layer.post_feedforward_norm);
  }
  const torch::Tensor mid = h + attention(layer, rms_norm(h, layer.input_norm), cos, sin, layout, cache, index);
  return mid + mlp(layer, rms_norm(mid, layer.post_attention_norm));
}

VocabMatrix LlamaModelImpl::embedding_matrix() const {
  if (embed_whole_.defined()) return {embed_whole_};
  return embed_rows_.defined() ? VocabMatrix{embed_, token_index_, embed_rows_, token_slots_} : VocabMatrix{embed_};
}

VocabMatrix LlamaModelImpl::lm_head() const {
  if (lm_head_whole_.defined()) return {lm_head_whole_};
  if (lm_head_rows_.defined()) return {lm_head_->weight(), token_index_, lm_head_rows_, token_slots_};
  return config_.tie_word_embeddings ? embedding_matrix() : VocabMatrix{lm_head_->weight()};
}

torch::Tensor LlamaModelImpl::forward(const torch::Tensor& input_ids, const ForwardOptions& options) {
  return project(hidden_states(input_ids, options), lm_head()).to(torch::kFloat32);
}

torch::Tensor LlamaModelImpl::next_token_logits(const torch::Tensor& input_ids, const ForwardOptions& options) {
  const torch::Tensor hidden = hidden_states(input_ids, options);
  return project(hidden.select(1, hidden.size(1) - 1), lm_head()).to(torch::kFloat32);
}

torch::Tensor LlamaModelImpl::hidden_states(const torch::Tensor& input_ids, const ForwardOptions& options) {
  SHARDLORA_CHECK(input_ids.dim() == 2, "input_ids must be [batch, seq], got ", input_ids.sizes());
  const int64_t batch = input_ids.size(0), seq = input_ids.size(1);
  const int64_t past = options.cache ? options.cache->length : 0;
  SHARDLORA_CHECK(!(options.cache && options.document_ids), "document_ids cannot be combined with a KV cache");
  const auto device = embed_.device();
  const auto ids = to_device(input_ids, device);
  const auto longs = torch::TensorOptions(torch::kInt64).device(device);
  const torch::Tensor positions =
      options.position_ids ? to_device(*options.position_ids, device) : torch::arange(past, past + seq, longs).expand({batch, seq});
  // Attention runs per document (segmented_attention, no mask; windowed layers in bands of
  // their window), a prompt's prefill too. One token after cached ones attends to every key
  // a layer holds (no mask). Several tokens after cached ones take dense masks:
  // allowed[1, 1, i, j], token i may attend to j (j <= i counting cached tokens), and that
  // within the window (HF: by cache position, not position id): j > i - window.
  torch::Tensor segments, allowed, windowed;
  const bool after_cached = past > 0;
  if (after_cached && seq > 1) {
    allowed = torch::arange(past + seq, longs).view({1, -1}).le(torch::arange(past, past + seq, longs).view({-1, 1})).view({1, 1, seq, past + seq});
    if (config_.sliding_window && *config_.sliding_window < past + seq) {
      const torch::Tensor distance =
          torch::arange(past, past + seq, longs).view({-1, 1}) - torch::arange(past + seq, longs).view({1, -1});
      windowed = allowed.logical_and(distance.lt(*config_.sliding_window).view({1, 1, seq, past + seq}));
    }
  } else if (!after_cached) {
    segments = document_segments(options.document_ids ? *options.document_ids : torch::zeros({batch, seq}, torch::kInt64)).first;
  }
  // HF LlamaRotaryEmbedding: angles in float32, cos / sin cast to the compute dtype (HF
  // repeats them for the second half of each head; the tables keep one half).
  // Dynamic NTK and LongRoPE choose their frequencies by the sequence's length (transformers:
  // the largest position id + 1), read where the ids were given (the host, in training).
  RotaryFrequencies rotary = rotary_;
  if (rotary_depends_on_length(config_)) {
    rotary = rotary_frequencies(config_, options.position_ids ? options.position_ids->max().item<int64_t>() + 1 : past + seq);
    rotary.inv_freq = to_device(rotary.inv_freq, device);
  }
  const auto dtype = options_.compute_dtype;
  const auto tables = [&](const RotaryFrequencies& frequencies) {
    const torch::Tensor angles = positions.to(torch::kFloat32).unsqueeze(-1) * frequencies.inv_freq.view({1, 1, -1});
    return std::pair{(angles.cos() * frequencies.attention_scaling).to(dtype), (angles.sin() * frequencies.attention_scaling).to(dtype)};
  };
  const auto [cos, sin] = tables(rotary);
  torch::Tensor local_cos, local_sin;
  if (local_rotary_.inv_freq.defined()) std::tie(local_cos, local_sin) = tables(local_rotary_);

  torch::Tensor h = embed(embedding_matrix(), ids, embed_.scalar_type());
  // Gemma3TextScaledWordEmbedding: times sqrt(hidden_size), rounded to the weights' dtype first.
  if (config_.gemma) h = h * torch::tensor(std::sqrt(static_cast<double>(config_.hidden_size))).to(h.scalar_type());
  // After Gemma's scaling, which transformers does inside the embedding module it hooks.
  if (options_.neftune_alpha > 0 && is_training()) h = h + neftune_noise(h, options_.neftune_alpha);
  if (sharded_) sharded_->begin_forward(is_training() && torch::GradMode::is_enabled() && !options.cache);
  const bool checkpoint = options_.activation_checkpointing && is_training() && torch::GradMode::is_enabled() && !options.cache;
  // The layers' input must take part in autograd for the recomputation to reach the adapters
  // (HF's enable_input_require_grads does the same); trained token rows already make it so.
  if (checkpoint && !h.requires_grad()) h = h.detach().requires_grad_(true);
  for (size_t index = 0; index < layers_.size(); ++index) {
    const bool in_window = windowed.defined() && config_.layer_uses_window(static_cast<int64_t>(index));
    const torch::Tensor& layout = after_cached ? (in_window ? windowed : allowed) : segments;
    const bool local = local_cos.defined() && config_.layer_uses_window(static_cast<int64_t>(index));
    const torch::Tensor& layer_cos = local ? local_cos : cos;
    const torch::Tensor& layer_sin = local ? local_sin : sin;
    h = checkpoint ? CheckpointedLayer::apply(h, this, static_cast<int64_t>(index), layer_cos, layer_sin, layout)
                   : layer_forward(index, h, layer_cos, layer_sin, layout, options.cache);
  }
  if (options.cache) options.cache->length += seq;
  return rms_norm(h, final_norm_);
}

}  // namespace shardlora::nn
