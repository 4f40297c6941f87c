#include "shardlora/train/memory_estimate.h"

#include <algorithm>
#include <set>

#include "shardlora/kernels/check.h"
#include "shardlora/nn/fused_ops.h"

namespace shardlora::train {
namespace {

int64_t linear_parameters_per_layer(const nn::LlamaConfig& c) {
  int64_t total = 0;
  for (const auto& linear : nn::decoder_linears(c)) total += linear.in * linear.out;
  return total;
}

// Bytes of `parameters` 4-bit weights with their quantization state (bitsandbytes layout).
int64_t quantized_bytes(int64_t parameters, int64_t blocksize, bool double_quant) {
  const int64_t blocks = (parameters + blocksize - 1) / blocksize;
  const int64_t state = double_quant ? blocks + (blocks + 255) / 256 * 4 + 256 * 4 : blocks * 4;
  return (parameters + 1) / 2 + state;
}

// The decoder Linears the recipe's lora.target_modules adapt.
std::vector<nn::DecoderLinear> adapted_linears(const Recipe& recipe, const nn::LlamaConfig& c) {
  const auto targets = recipe.get_strings("lora.target_modules");
  const std::set<std::string> chosen(targets.begin(), targets.end());
  std::vector<nn::DecoderLinear> adapted;
  for (const auto& linear : nn::decoder_linears(c)) {
    if (chosen.count("all-linear") || chosen.count(linear.name.substr(linear.name.find('.') + 1))) adapted.push_back(linear);
  }
  return adapted;
}

// A and B, DoRA's magnitude per output row, and the rows of added tokens (embed_tokens, and
// an untied lm_head).
int64_t adapter_parameters(const Recipe& recipe, const nn::LlamaConfig& c) {
  const bool dora = recipe.get_bool("lora.use_dora");
  int64_t total = 0;
  for (const auto& linear : adapted_linears(recipe, c)) total += recipe.get_int("lora.r") * (linear.in + linear.out) + (dora ? linear.out : 0);
  const auto tokens = static_cast<int64_t>(recipe.get_strings("data.add_special_tokens").size());
  const auto whole = static_cast<int64_t>(recipe.get_strings("lora.modules_to_save").size());
  // A module trained whole takes no token rows.
  const int64_t row_modules = std::max<int64_t>(0, (c.tie_word_embeddings ? 1 : 2) - whole);
  return total * c.num_hidden_layers + tokens * c.hidden_size * row_modules + whole * (c.vocab_size + tokens) * c.hidden_size;
}

// Activation bytes one decoder layer keeps for backward, per token, and per token per
// attended position (eager attention: the fp32 softmax output, its copy in the compute dtype
// when that is 16-bit, the mask), counted tensor by tensor from what autograd saves.
struct LayerActivations {
  int64_t per_token, per_token_position;
};

LayerActivations layer_activations(const nn::LlamaConfig& c, int64_t dtype_bytes, int64_t lora_r, bool lora_dropout,
                                   int64_t dora_outputs) {
  const int64_t h = c.hidden_size, q = c.q_size(), i = c.intermediate_size;
  int64_t per_token = 2 * 2 * dtype_bytes * h  // two fused RMSNorms: the input and the output (the Linears' input)
                      + dtype_bytes * 3 * q    // q, k (rotated in place) and v repeated to every head, as attention keeps them
                      + dtype_bytes * q        // the attention output, o_proj's input
                      + dtype_bytes * 3 * i    // fused SwiGLU: gate, up and the product (down_proj's input)
                      + (c.qk_norm ? dtype_bytes * (q + c.kv_size()) : 0);  // Qwen3's head norms keep q and k as projected
  if (lora_r > 0) {
    int64_t inputs = 0;
    for (const auto& linear : nn::decoder_linears(c)) inputs += linear.in;
    per_token += dtype_bytes * 7 * lora_r + (lora_dropout ? (dtype_bytes + 1) * inputs : 0);
    // DoRA keeps W x and B A x of each adapted Linear for the magnitudes' gradient.
    per_token += 2 * dtype_bytes * dora_outputs;
  }
  return {kActivationOverhead * per_token, c.num_attention_heads * (4 + (dtype_bytes == 4 ? 0 : dtype_bytes)) + 1};
}

}  // namespace

const char* method_name(Method method) {
  switch (method) {
    case Method::FullFinetune: return "full";
    case Method::Lora16: return "lora";
    case Method::QLora: return "qlora";
  }
  return "?";
}

int64_t MemoryEstimate::device_total() const {
  int64_t total = 0;
  for (const auto& row : rows) total += row.device_bytes;
  return total;
}

int64_t MemoryEstimate::host_total() const {
  int64_t total = 0;
  for (const auto& row : rows) total += row.host_bytes;
  return total;
}

int64_t MemoryEstimate::row(const std::string& name, bool device) const {
  for (const auto& r : rows) {
    if (r.name == name) return device ? r.device_bytes : r.host_bytes;
  }
  return 0;
}

int64_t parameter_count(const nn::LlamaConfig& c) {
  return c.vocab_size * c.hidden_size * (c.tie_word_embeddings ? 1 : 2) + ((c.gemma ? 4 : 2) * c.num_hidden_layers + 1) * c.hidden_size +
         (c.qk_norm ? 2 * c.num_hidden_layers * c.head_dim : 0) + c.num_hidden_layers * linear_parameters_per_layer(c);
}

std::vector<MemoryEstimate> estimate_memory(const Recipe& recipe, const nn::LlamaConfig& c, const EstimateOptions& options) {
  SHARDLORA_CHECK(options.world_size >= 1, "world size must be at least 1, not ", options.world_size);
  const int64_t world = options.world_size;
  const int64_t dtype_bytes = recipe.get_string("model.dtype") == "fp32" ? 4 : 2;
  const int64_t layers = c.num_hidden_layers;
  const int64_t linear_params = layers * linear_parameters_per_layer(c);
  const int64_t float_params = parameter_count(c) - linear_params;
  const int64_t tokens = recipe.get_int("training.micro_batch_size") * recipe.get_int("data.max_seq_len");
  const int64_t seq = recipe.get_int("data.max_seq_len");
  const bool checkpointing = recipe.get_bool("training.activation_checkpointing");
  const int64_t r = recipe.get_int("lora.r");
  const int64_t adapter_params = adapter_parameters(recipe, c);
  const bool shard = recipe.get_string("distributed.strategy") == "shard" && world > 1;
  const int64_t blocksize = std::stoll(recipe.get_string("model.quantization.blocksize"));
  const bool double_quant = recipe.get_bool("model.quantization.double_quant");
  const std::string placement = recipe.get_string("optimizer.placement");
  const bool eight_bit = recipe.get_string("optimizer.name") == "paged_adamw_8bit";
  const int64_t page_elements = 1 << 20;

  // Rows are placed with this: on a GPU at `where`, on the CPU always host.
  const auto row = [&](const std::string& name, int64_t bytes, bool on_device) {
    return options.on_gpu && on_device ? MemoryRow{name, bytes, 0} : MemoryRow{name, 0, bytes};
  };
  // Attention on a GPU is FlashAttention (libtorch 2.x SDPA, no [T, T] terms); libtorch
  // 1.13 on the CPU computes eager attention per document, counted here for documents as
  // long as a row (the worst case: packed short documents take less).
  const bool eager_attention = !options.on_gpu;
  const bool dora = recipe.get_bool("lora.use_dora");
  int64_t dora_outputs = 0, dora_largest = 0;  // per layer: the adapted Linears' outputs, the largest weight
  for (const auto& linear : dora ? adapted_linears(recipe, c) : std::vector<nn::DecoderLinear>{}) {
    dora_outputs += linear.out;
    dora_largest = std::max(dora_largest, linear.out * linear.in);
  }
  // The positions each query attends to: a windowed layer's bands of its window reach at
  // most 2 window - 1 (nn::segmented_attention).
  const auto attended = [&](int64_t layer) {
    return c.sliding_window && c.layer_uses_window(layer) ? std::min(seq, 2 * *c.sliding_window - 1) : seq;
  };
  int64_t most_attended = 0;
  for (int64_t l = 0; l < layers; ++l) most_attended = std::max(most_attended, attended(l));
  const auto activation_bytes = [&](bool lora) {
    const LayerActivations per_layer =
        layer_activations(c, dtype_bytes, lora ? r : 0, lora && recipe.get_float("lora.dropout") > 0, dora_outputs);
    const auto one_layer = [&](int64_t positions) {
      return tokens * per_layer.per_token + (eager_attention ? tokens * positions * per_layer.per_token_position : 0);
    };
    int64_t all_layers = 0;
    for (int64_t l = 0; l < layers; ++l) all_layers += one_layer(attended(l));
    // Checkpointing keeps each layer's input and recomputes one layer at a time in backward.
    const int64_t kept = checkpointing ? layers * tokens * c.hidden_size * dtype_bytes + one_layer(most_attended) : all_layers;
    return kept + tokens * c.hidden_size * dtype_bytes;  // and the embedding output
  };
  // What is live beside the kept activations only for a while, the larger of: one layer's
  // eager attention (fp32 scores, masked scores and their gradient) as it runs, and the
  // chunked loss (nn::linear_cross_entropy): one chunk of logits, overwritten by its
  // gradient, and the gradient with respect to the hidden states.
  const int64_t attention_transient = eager_attention ? 3 * tokens * most_attended * c.num_attention_heads * 4 : 0;
  const int64_t chunk_rows = nn::loss_chunk_rows(tokens, c.hidden_size, c.vocab_size);
  const int64_t loss_transient = chunk_rows * c.vocab_size * dtype_bytes + tokens * (c.hidden_size * dtype_bytes + 4);
  // With adapters, DoRA's norm of W + scaling * B A too: the largest base dequantized in fp32
  // for W A^T.
  const int64_t dora_transient = 4 * dora_largest;
  const auto transient_row = [&](bool adapters) {
    if (adapters && dora_transient > std::max(attention_transient, loss_transient)) {
      return row("transient: DoRA's weight norm", dora_transient, true);
    }
    return attention_transient > loss_transient ? row("transient: one layer's attention", attention_transient, true)
                                                : row("transient: a loss chunk", loss_transient, true);
  };

  std::vector<MemoryEstimate> estimates;
  for (const Method method : {Method::FullFinetune, Method::Lora16, Method::QLora}) {
    MemoryEstimate e{method, {}};
    e.rows.push_back({"runtime", options.on_gpu ? kCudaContextBytes : 0, kCpuRuntimeBytes});
    if (method == Method::FullFinetune) {
      const int64_t params = parameter_count(c);
      e.rows.push_back(row("weights (bf16)", 2 * params, true));
      e.rows.push_back(row("gradients (bf16)", 2 * params, true));
      e.rows.push_back(row("optimizer: fp32 master + AdamW", 12 * params, true));
      e.rows.push_back(row("activations", activation_bytes(false), true));
    } else {
      if (method == Method::Lora16) {
        e.rows.push_back(row(dtype_bytes == 2 ? "base weights (16-bit)" : "base weights (fp32)", dtype_bytes * linear_params, true));
      } else {
        const int64_t quantized = quantized_bytes(linear_params, blocksize, double_quant);
        e.rows.push_back(row("base weights (4-bit + quant state)", shard ? (quantized + world - 1) / world : quantized, true));
        if (shard) e.rows.push_back(row("all-gather buffer (2 layers)", 2 * quantized_bytes(linear_params / layers, blocksize, double_quant), true));
      }
      // A matrix trained whole is only its fp32 parameter (counted with the adapters).
      const auto whole = recipe.get_strings("lora.modules_to_save");
      const auto trained_whole = [&](const std::string& module) { return std::find(whole.begin(), whole.end(), module) != whole.end(); };
      const int64_t frozen_params = float_params - static_cast<int64_t>(whole.size()) * c.vocab_size * c.hidden_size;
      e.rows.push_back(row("embeddings, norms, lm_head", dtype_bytes * frozen_params, true));
      e.rows.push_back(row("adapters (fp32)", 4 * adapter_params, true));
      e.rows.push_back(row("adapter gradients (fp32)", 4 * adapter_params, true));
      const int64_t state = eight_bit ? 2 * adapter_params + 2 * ((adapter_params + 255) / 256) * 4 : 8 * adapter_params;
      e.rows.push_back(row(std::string("optimizer state (") + (eight_bit ? "8" : "32") + "-bit, " + placement + ")", state,
                           placement == "device"));
      if (options.on_gpu && placement != "device") {
        e.rows.push_back(row("host master copy + pinned gradients", 8 * adapter_params, false));
      }
      if (placement == "paged") {
        const int64_t staged = std::min(adapter_params, recipe.get_int("optimizer.gpu_pages") * page_elements);
        e.rows.push_back(row("optimizer staging pages", staged * (eight_bit ? 2 + 4 + 4 : 8 + 4 + 4), true));
      }
      e.rows.push_back(row("activations", activation_bytes(true), true));
      // Trained token rows take part where they stand (nn::VocabMatrix): nothing of [vocab,
      // hidden]. An lm_head trained whole goes into the logits as a copy in the compute dtype,
      // and the loss keeps its fp32 gradient from forward to backward.
      if (trained_whole("lm_head") || (c.tie_word_embeddings && trained_whole("embed_tokens"))) {
        const auto vocab = c.vocab_size + static_cast<int64_t>(recipe.get_strings("data.add_special_tokens").size());
        e.rows.push_back(row("lm_head trained whole: its copy, the loss's gradient", vocab * c.hidden_size * (4 + dtype_bytes), true));
      }
    }
    e.rows.push_back(transient_row(method != Method::FullFinetune));
    if (world > 1) {
      // Two buckets in flight, capped by what there is to reduce.
      const int64_t gradient_bytes = method == Method::FullFinetune ? 2 * parameter_count(c) : 4 * adapter_params;
      e.rows.push_back(row("gradient buckets", 2 * std::min(gradient_bytes, recipe.get_int("distributed.bucket_mb") << 20), true));
    }
    estimates.push_back(std::move(e));
  }
  return estimates;
}

}  // namespace shardlora::train
