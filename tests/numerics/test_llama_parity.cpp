// The model's logits against an fp64 reference written here from Hugging Face's
// definitions (modeling_llama / modeling_qwen2), on tiny configs that exercise GQA, q/k/v
// bias, tied embeddings, llama3 rope scaling, sliding windows and packed sequences with
// document masks.
// The reference uses the model's dequantized 4-bit weights (dequantization is tested on its own).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "random_llama.h"
#include "shardlora/nn/llama.h"

using namespace shardlora;
using namespace shardlora::nn;
using namespace shardlora::testing;

namespace {

// Rotary inverse frequencies in fp64 and the factor on cos / sin for a sequence of
// `seq_len` positions, element by element from transformers' ROPE_INIT_FUNCTIONS (default,
// linear, dynamic, yarn, longrope, llama3); attention factors from their published defaults.
struct ReferenceRotary {
  std::vector<double> inv_freq;
  double attention = 1.0;
};

ReferenceRotary reference_rotary(const LlamaConfig& c, int64_t seq_len) {
  const int64_t D = c.rotary_dim();  // transformers: dim = head_dim * partial_rotary_factor
  ReferenceRotary out;
  const auto plain = [&](double base, int64_t i) { return 1.0 / std::pow(base, static_cast<double>(i) / D); };
  if (!c.rope_scaling) {
    for (int64_t i = 0; i < D; i += 2) out.inv_freq.push_back(plain(c.rope_theta, i));
    return out;
  }
  const auto& s = *c.rope_scaling;
  const double original = s.original_max_position_embeddings, max_pos = c.max_position_embeddings;
  for (int64_t i = 0; i < D; i += 2) {
    double f = plain(c.rope_theta, i);
    if (s.type == "linear") {
      f /= s.factor;
    } else if (s.type == "dynamic") {
      const double length = std::max<double>(seq_len, max_pos);
      f = plain(c.rope_theta * std::pow(s.factor * length / max_pos - (s.factor - 1), D / (D - 2.0)), i);
    } else if (s.type == "longrope") {
      f = 1.0 / ((seq_len > original ? s.long_factor : s.short_factor)[i / 2] * std::pow(c.rope_theta, static_cast<double>(i) / D));
    } else if (s.type == "yarn") {
      const auto correction = [&](double rotations) { return D * std::log(original / (rotations * 2 * M_PI)) / (2 * std::log(c.rope_theta)); };
      double low = correction(s.beta_fast), high = correction(s.beta_slow);
      if (s.truncate) low = std::floor(low), high = std::ceil(high);
      low = std::max(low, 0.0), high = std::min(high, D - 1.0);
      if (low == high) high += 0.001;
      const double ramp = std::clamp((i / 2 - low) / (high - low), 0.0, 1.0);
      f = f / s.factor * ramp + f * (1 - ramp);
    } else {  // llama3
      const double wavelen = 2 * M_PI / f;
      if (wavelen > original / s.low_freq_factor) {
        f = f / s.factor;
      } else if (wavelen >= original / s.high_freq_factor) {
        const double smooth = (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = (1 - smooth) * f / s.factor + smooth * f;
      }
    }
    out.inv_freq.push_back(f);
  }
  if (s.type == "yarn") out.attention = 0.1 * std::log(s.factor) + 1.0;
  if (s.type == "longrope") out.attention = std::sqrt(1 + std::log(s.factor) / std::log(original));
  return out;
}

torch::Tensor reference_logits(LlamaModel& model, const Weights& w, const torch::Tensor& ids, const torch::Tensor& positions,
                               const torch::Tensor& docs) {
  const LlamaConfig& c = model->config();
  const auto f64 = torch::kFloat64;
  std::map<std::string, torch::Tensor> dense;
  for (auto& [name, linear] : model->linears()) dense[name] = linear->base().dense_weight(f64);
  // Gemma3RMSNorm scales by (1 + weight).
  const auto norm = [&](const torch::Tensor& x, const torch::Tensor& weight) {
    return x / torch::sqrt(x.pow(2).mean(-1, true) + c.rms_norm_eps) * (weight.to(f64) + (c.gemma ? 1.0 : 0.0));
  };
  const auto linear = [&](const torch::Tensor& x, const std::string& name) {
    torch::Tensor y = torch::matmul(x, dense.at(name).t());
    if (w.count(name + ".bias")) y = y + w.at(name + ".bias").to(f64);
    return y;
  };
  const int64_t B = ids.size(0), T = ids.size(1), H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim;
  // rotary angles and the attention mask, element by element; Gemma 3's windowed layers turn
  // by their own base, unscaled.
  const int64_t R = c.rotary_dim();  // Phi-3's partial rotary: only the first R dims of a head turn
  const auto tables = [&](const LlamaConfig& rc) {
    const ReferenceRotary rotary = reference_rotary(rc, positions.max().item<int64_t>() + 1);
    torch::Tensor cos = torch::empty({B, 1, T, R}, f64), sin = torch::empty({B, 1, T, R}, f64);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < R; ++i) {
          const double angle = positions[b][t].item<int64_t>() * rotary.inv_freq[i % (R / 2)];
          cos[b][0][t][i] = std::cos(angle) * rotary.attention;
          sin[b][0][t][i] = std::sin(angle) * rotary.attention;
        }
      }
    }
    return std::pair{cos, sin};
  };
  const auto global = tables(c);
  LlamaConfig local_config = c;
  if (c.local_rope_theta > 0) local_config.rope_theta = c.local_rope_theta, local_config.rope_scaling.reset();
  const auto local = tables(local_config);
  torch::Tensor mask = torch::zeros({B, 1, T, T}, f64), window_mask = torch::zeros({B, 1, T, T}, f64);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t s = 0; s < T; ++s) {
        if (s > t || docs[b][s].item<int64_t>() != docs[b][t].item<int64_t>()) mask[b][0][t][s] = -INFINITY;
        if (s > t || docs[b][s].item<int64_t>() != docs[b][t].item<int64_t>() ||
            (c.sliding_window && t - s >= *c.sliding_window)) {
          window_mask[b][0][t][s] = -INFINITY;
        }
      }
    }
  }
  const auto& embed = w.at("model.embed_tokens.weight");
  torch::Tensor h = embed.to(f64).index({ids});
  if (c.gemma) h = h * std::sqrt(static_cast<double>(c.hidden_size));  // Gemma3TextScaledWordEmbedding
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const auto& [cos, sin] = c.layer_uses_window(l) ? local : global;
    const auto rope = [&](const torch::Tensor& x) {
      const auto turned = x.narrow(-1, 0, R), x1 = turned.narrow(-1, 0, R / 2), x2 = turned.narrow(-1, R / 2, R / 2);
      return torch::cat({turned * cos + torch::cat({-x2, x1}, -1) * sin, x.narrow(-1, R, D - R)}, -1);
    };
    const torch::Tensor x = norm(h, w.at(p + "input_layernorm.weight"));
    // Qwen3Attention: q_norm / k_norm (RMSNorm over head_dim) on each head, then RoPE.
    const auto head_norm = [&](const torch::Tensor& heads, const char* name) {
      return c.qk_norm ? norm(heads, w.at(p + "self_attn." + name + ".weight")) : heads;
    };
    // Phi3Attention: one qkv_proj, sliced into q, k, v.
    const auto project = [&](const char* name) {
      if (!c.fused_projections) return linear(x, p + "self_attn." + name + "_proj");
      const torch::Tensor qkv = linear(x, p + "self_attn.qkv_proj");
      const std::string which = name;
      return which == "q" ? qkv.narrow(-1, 0, H * D) : qkv.narrow(-1, H * D + (which == "k" ? 0 : KV * D), KV * D);
    };
    const torch::Tensor q = rope(head_norm(project("q").reshape({B, T, H, D}), "q_norm").transpose(1, 2));
    const torch::Tensor k = rope(head_norm(project("k").reshape({B, T, KV, D}), "k_norm").transpose(1, 2)).repeat_interleave(H / KV, 1);
    const torch::Tensor v = project("v").reshape({B, T, KV, D}).transpose(1, 2).repeat_interleave(H / KV, 1);
    const torch::Tensor& layer_mask = c.layer_uses_window(l) ? window_mask : mask;
    const double scale = 1.0 / std::sqrt(c.query_pre_attn_scalar > 0 ? c.query_pre_attn_scalar : double(D));  // Gemma 3's scalar
    const torch::Tensor attn = torch::softmax(torch::matmul(q, k.transpose(2, 3)) * scale + layer_mask, -1);
    const torch::Tensor attended = linear(torch::matmul(attn, v).transpose(1, 2).reshape({B, T, H * D}), p + "self_attn.o_proj");
    if (c.gemma) {  // Gemma3DecoderLayer: post_attention_layernorm on the branch, pre / post_feedforward around the MLP
      h = h + norm(attended, w.at(p + "post_attention_layernorm.weight"));
      const torch::Tensor y = norm(h, w.at(p + "pre_feedforward_layernorm.weight"));
      const torch::Tensor gelu = torch::gelu(linear(y, p + "mlp.gate_proj"), "tanh");
      h = h + norm(linear(gelu * linear(y, p + "mlp.up_proj"), p + "mlp.down_proj"), w.at(p + "post_feedforward_layernorm.weight"));
      continue;
    }
    h = h + attended;
    const torch::Tensor y = norm(h, w.at(p + "post_attention_layernorm.weight"));
    if (c.fused_projections) {  // Phi3MLP: gate, up = gate_up_proj(y).chunk(2)
      const auto gate_up = linear(y, p + "mlp.gate_up_proj").chunk(2, -1);
      h = h + linear(torch::silu(gate_up[0]) * gate_up[1], p + "mlp.down_proj");
    } else {
      h = h + linear(torch::silu(linear(y, p + "mlp.gate_proj")) * linear(y, p + "mlp.up_proj"), p + "mlp.down_proj");
    }
  }
  const torch::Tensor head = c.tie_word_embeddings ? embed : w.at("lm_head.weight");
  return torch::matmul(norm(h, w.at("model.norm.weight")), head.to(f64).t());
}

void expect_parity(const LlamaConfig& config, const torch::Tensor& ids, const ForwardOptions& forward,
                   const torch::Tensor& positions, const torch::Tensor& docs) {
  const Weights weights = random_weights(config, 11);
  ModelOptions options;
  options.compute_dtype = torch::kFloat32;
  LlamaModel model(config, lookup_in(weights), options, "test weights");
  const torch::Tensor logits = model->forward(ids, forward);
  const torch::Tensor expected = reference_logits(model, weights, ids, positions, docs);
  ASSERT_EQ(logits.sizes(), expected.sizes());
  const double error = (logits.to(torch::kFloat64) - expected).abs().max().item<double>();
  const double scale = expected.abs().max().item<double>();
  EXPECT_LE(error, 1e-5 * scale) << config.model_type << ": max error " << error << " of " << scale;
}

torch::Tensor sample_ids(int64_t batch, int64_t seq, int64_t vocab) {
  torch::manual_seed(5);
  return torch::randint(vocab, {batch, seq}, torch::kInt64);
}

}  // namespace

TEST(LlamaParity, GroupedQueryAttention) {
  const auto config = tiny_config("llama");
  const auto ids = sample_ids(2, 9, config.vocab_size);
  const auto positions = torch::arange(9).expand({2, 9});
  expect_parity(config, ids, {}, positions, torch::zeros({2, 9}, torch::kInt64));
}

TEST(LlamaParity, Qwen2WithQkvBias) {
  const auto config = tiny_config("qwen2");
  ASSERT_TRUE(config.qkv_bias);
  const auto ids = sample_ids(1, 7, config.vocab_size);
  expect_parity(config, ids, {}, torch::arange(7).expand({1, 7}), torch::zeros({1, 7}, torch::kInt64));
}

TEST(LlamaParity, Qwen3WithHeadNormsAndAHeadDimOfItsOwn) {
  // head_dim 24 != hidden / heads (as Qwen3-8B's 128 with 4096 / 32 = 128 is not always).
  const auto config = tiny_config("qwen3", {{"head_dim", 24}, {"tie_word_embeddings", true}});
  ASSERT_TRUE(config.qk_norm);
  ASSERT_FALSE(config.qkv_bias);
  const auto ids = sample_ids(2, 8, config.vocab_size);
  const torch::Tensor docs = torch::tensor({0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0}).view({2, 8});
  const torch::Tensor positions = torch::tensor({0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7}).view({2, 8});
  expect_parity(config, ids, {.position_ids = positions, .document_ids = docs}, positions, docs);
  auto biased = tiny_config("qwen3", {{"attention_bias", true}});
  ASSERT_TRUE(biased.qkv_bias && biased.o_bias);
  expect_parity(biased, ids, {}, torch::arange(8).expand({2, 8}), torch::zeros({2, 8}, torch::kInt64));
}

TEST(LlamaParity, Phi3FusedProjectionsPartialRotaryLongropeAndWindow) {
  std::vector<double> short_factor(6), long_factor(6);  // head_dim 16 x 0.75 = 12 rotated dims: 6 pairs
  for (int i = 0; i < 6; ++i) short_factor[i] = 1.0 + 0.1 * i, long_factor[i] = 1.0 + 2.0 * i;
  const auto config = tiny_config("phi3", {{"partial_rotary_factor", 0.75}, {"sliding_window", 5}, {"max_position_embeddings", 256},
                                           {"original_max_position_embeddings", 32},
                                           {"rope_scaling", {{"type", "su"}, {"short_factor", short_factor}, {"long_factor", long_factor}}}});
  ASSERT_TRUE(config.fused_projections);
  ASSERT_EQ(config.rotary_dim(), 12);
  ASSERT_EQ(config.rope_scaling->type, "longrope") << "Phi3Config reads 'su' as longrope";
  EXPECT_TRUE(config.layer_uses_window(0) && config.layer_uses_window(1));
  const auto ids = sample_ids(2, 9, config.vocab_size);
  for (const int64_t stride : {int64_t{1}, int64_t{7}}) {  // positions within and past the original 32
    const torch::Tensor positions = (torch::arange(9) * stride).expand({2, 9});
    expect_parity(config, ids, {.position_ids = positions}, positions, torch::zeros({2, 9}, torch::kInt64));
  }
  // No position ids: the length that picks the factors is the token count (30, short factors:
  // within the original 32), as transformers' largest position id + 1.
  expect_parity(config, sample_ids(1, 30, config.vocab_size), {}, torch::arange(30).expand({1, 30}), torch::zeros({1, 30}, torch::kInt64));
  const auto phi4 = tiny_config("phi3", {{"rope_theta", 250000.0}});  // Phi-4: full rotary, no window, no scaling
  EXPECT_FALSE(phi4.sliding_window);
  expect_parity(phi4, ids, {}, torch::arange(9).expand({2, 9}), torch::zeros({2, 9}, torch::kInt64));
}

TEST(LlamaParity, Gemma3NormsEmbeddingScaleGeluLocalAndGlobalLayers) {
  // Layers 0, 1 local (window 4, base 10k), 2 global (base 1M, linear scaling as Gemma 3 4B's),
  // query_pre_attn_scalar unlike head_dim (Gemma 3 27B: 168 for 128).
  const auto config = tiny_config("gemma3_text", {{"num_hidden_layers", 3}, {"sliding_window", 4}, {"sliding_window_pattern", 3},
                                                  {"query_pre_attn_scalar", 24}, {"rope_theta", 1000000.0},
                                                  {"rope_scaling", {{"rope_type", "linear"}, {"factor", 8.0}}},
                                                  {"tie_word_embeddings", true}});
  ASSERT_TRUE(config.gemma && config.qk_norm);
  EXPECT_TRUE(config.layer_uses_window(0) && config.layer_uses_window(1));
  EXPECT_FALSE(config.layer_uses_window(2));
  EXPECT_EQ(config.local_rope_theta, 10000.0);
  const auto ids = sample_ids(2, 9, config.vocab_size);
  const torch::Tensor positions = (torch::arange(9) * 5).expand({2, 9});
  expect_parity(config, ids, {.position_ids = positions}, positions, torch::zeros({2, 9}, torch::kInt64));
  const auto typed = tiny_config("gemma3_text", {{"layer_types", {"full_attention", "sliding_attention"}}, {"sliding_window", 3}});
  EXPECT_FALSE(typed.layer_uses_window(0));
  EXPECT_TRUE(typed.layer_uses_window(1));
  expect_parity(typed, ids, {}, torch::arange(9).expand({2, 9}), torch::zeros({2, 9}, torch::kInt64));
}

TEST(LlamaParity, TiedEmbeddings) {
  auto config = tiny_config("llama");
  config.tie_word_embeddings = true;
  const auto ids = sample_ids(1, 6, config.vocab_size);
  expect_parity(config, ids, {}, torch::arange(6).expand({1, 6}), torch::zeros({1, 6}, torch::kInt64));
}

TEST(LlamaParity, Llama3RopeScaling) {
  auto config = parse_llama_config({{"model_type", "llama"}, {"vocab_size", 40}, {"hidden_size", 64}, {"intermediate_size", 96},
                                    {"num_hidden_layers", 2}, {"num_attention_heads", 2}, {"num_key_value_heads", 1},
                                    {"rope_theta", 500000.0},
                                    {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                                      {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}}}},
                                   "test");
  // Wavelengths on both sides of the scaling band and inside it are present at head_dim 32.
  const auto inv_freq = rotary_frequencies(config).inv_freq;
  const auto expected = reference_rotary(config, 12).inv_freq;
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(inv_freq[i].item<double>(), expected[i], 1e-7 * expected[i]);
  const auto ids = sample_ids(1, 12, config.vocab_size);
  const auto positions = (torch::arange(12) * 37).expand({1, 12});  // far positions, where scaling matters
  expect_parity(config, ids, {.position_ids = positions}, positions, torch::zeros({1, 12}, torch::kInt64));
}

// Every rope type transformers publishes, on both sides of its thresholds: the frequencies
// and cos / sin factor against the fp64 formulas, then the logits at far positions.
TEST(LlamaParity, RopeScalingTypesAsTransformersComputesThem) {
  std::vector<double> short_factor, long_factor;
  for (int i = 0; i < 16; ++i) {  // head_dim 32: 16 factors each
    short_factor.push_back(1.0 + 0.05 * i);
    long_factor.push_back(1.0 + 0.9 * i);
  }
  const std::vector<std::pair<std::string, nlohmann::json>> cases = {
      {"linear", {{"rope_scaling", {{"type", "linear"}, {"factor", 4.0}}}}},
      {"dynamic", {{"rope_scaling", {{"rope_type", "dynamic"}, {"factor", 2.0}}}, {"max_position_embeddings", 64}}},
      {"yarn", {{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 64}}},
                {"max_position_embeddings", 256}}},
      {"yarn untruncated, betas", {{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 8.0}, {"original_max_position_embeddings", 128},
                                                     {"beta_fast", 16.0}, {"beta_slow", 2.0}, {"truncate", false}}}}},
      {"yarn from rope_parameters, factor from the context ratio",
       {{"rope_parameters", {{"rope_type", "yarn"}, {"rope_theta", 1e6}, {"original_max_position_embeddings", 64}}},
        {"max_position_embeddings", 512}}},
      {"longrope (Phi-3: original_max_position_embeddings beside rope_scaling)",
       {{"rope_scaling", {{"type", "longrope"}, {"short_factor", short_factor}, {"long_factor", long_factor}}},
        {"original_max_position_embeddings", 64}, {"max_position_embeddings", 1024}}},
  };
  for (const auto& [name, fields] : cases) {
    nlohmann::json json = {{"model_type", "llama"}, {"vocab_size", 40}, {"hidden_size", 64}, {"intermediate_size", 96},
                           {"num_hidden_layers", 2}, {"num_attention_heads", 2}, {"num_key_value_heads", 1}, {"rope_theta", 10000.0}};
    json.update(fields);
    const LlamaConfig config = parse_llama_config(json, "test");
    ASSERT_TRUE(config.rope_scaling) << name;
    // Without a factor, yarn and longrope take max_position_embeddings / the original.
    if (name.rfind("yarn from", 0) == 0) EXPECT_EQ(config.rope_scaling->factor, 8.0);
    if (name.rfind("longrope", 0) == 0) EXPECT_EQ(config.rope_scaling->factor, 16.0);
    for (const int64_t seq_len : {int64_t{12}, int64_t{100}, int64_t{2000}}) {
      const RotaryFrequencies ours = rotary_frequencies(config, seq_len);
      const ReferenceRotary expected = reference_rotary(config, seq_len);
      EXPECT_NEAR(ours.attention_scaling, expected.attention, 1e-12) << name;
      for (size_t i = 0; i < expected.inv_freq.size(); ++i) {
        EXPECT_NEAR(ours.inv_freq[i].item<double>(), expected.inv_freq[i], 2e-6 * expected.inv_freq[i]) << name << ", i " << i;
      }
    }
    // Far positions (past every threshold above) and near ones, where the choice differs.
    for (const int64_t stride : {int64_t{1}, int64_t{97}}) {
      const auto positions = (torch::arange(12) * stride).expand({1, 12});
      expect_parity(config, sample_ids(1, 12, config.vocab_size), {.position_ids = positions}, positions,
                    torch::zeros({1, 12}, torch::kInt64));
    }
  }
  EXPECT_NEAR(parse_llama_config({{"model_type", "llama"}, {"num_hidden_layers", 1}, {"max_position_embeddings", 131072},
                                  {"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32768}}}},
                                 "qwen3-yarn")
                  .rope_scaling->attention_factor,
              0.1 * std::log(4.0) + 1, 1e-12)
      << "Qwen3's published yarn setting";
}

LlamaConfig sliding_window_config(nlohmann::json fields) {
  nlohmann::json json = {{"vocab_size", 40}, {"hidden_size", 64}, {"intermediate_size", 96}, {"num_hidden_layers", 2},
                         {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"sliding_window", 4}};
  json.update(fields);
  return parse_llama_config(json, "test");
}

TEST(LlamaParity, MistralSlidingWindow) {
  const auto config = sliding_window_config({{"model_type", "mistral"}});
  ASSERT_EQ(config.sliding_window, 4);
  const auto ids = sample_ids(2, 11, config.vocab_size);
  const auto docs = torch::tensor({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1}).view({2, 11});
  const auto positions = torch::tensor({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4}).view({2, 11});
  expect_parity(config, ids, {.position_ids = positions, .document_ids = docs}, positions, docs);
}

TEST(LlamaParity, Qwen2SlidingWindowFromMaxWindowLayers) {
  const auto config = sliding_window_config({{"model_type", "qwen2"}, {"use_sliding_window", true}, {"max_window_layers", 1}});
  ASSERT_TRUE(config.sliding_window);
  EXPECT_FALSE(config.layer_uses_window(0));
  EXPECT_TRUE(config.layer_uses_window(1));
  const auto ids = sample_ids(1, 9, config.vocab_size);
  expect_parity(config, ids, {}, torch::arange(9).expand({1, 9}), torch::zeros({1, 9}, torch::kInt64));
  EXPECT_FALSE(sliding_window_config({{"model_type", "qwen2"}}).sliding_window) << "use_sliding_window defaults to false";
  EXPECT_FALSE(sliding_window_config({{"model_type", "llama"}}).sliding_window) << "Llama has no sliding window";
}

TEST(LlamaParity, PackedSequencesNeverAttendAcrossDocuments) {
  const auto config = tiny_config("llama");
  const auto ids = sample_ids(2, 10, config.vocab_size);
  const torch::Tensor docs = torch::tensor({0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1}).view({2, 10});
  const torch::Tensor positions = torch::tensor({0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3}).view({2, 10});
  expect_parity(config, ids, {.position_ids = positions, .document_ids = docs}, positions, docs);

  // A document's logits do not depend on what precedes it in the pack.
  const Weights weights = random_weights(config, 11);
  ModelOptions options;
  options.compute_dtype = torch::kFloat32;
  LlamaModel model(config, lookup_in(weights), options, "test weights");
  const torch::Tensor packed = model->forward(ids.narrow(0, 0, 1), {.position_ids = positions.narrow(0, 0, 1), .document_ids = docs.narrow(0, 0, 1)});
  const torch::Tensor alone = model->forward(ids.narrow(0, 0, 1).narrow(1, 3, 4));
  EXPECT_TRUE(torch::allclose(packed.narrow(1, 3, 4), alone, 1e-5, 1e-5));
}

TEST(LlamaConfigParsing, ErrorsNameTheFileAndKey) {
  auto error_of = [](nlohmann::json json) {
    try {
      parse_llama_config(json, "model/config.json");
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  nlohmann::json good = {{"model_type", "llama"}, {"vocab_size", 40}, {"hidden_size", 64}, {"intermediate_size", 96},
                         {"num_hidden_layers", 2}, {"num_attention_heads", 4}};
  EXPECT_EQ(parse_llama_config(good, "f").num_key_value_heads, 4);
  auto bad = good;
  bad["model_type"] = "gpt2";
  EXPECT_NE(error_of(bad).find("model/config.json: model_type 'gpt2' is not supported"), std::string::npos);
  bad = good;
  bad["hidden_size"] = 66;
  EXPECT_NE(error_of(bad).find("hidden_size (66) is not divisible by num_attention_heads (4)"), std::string::npos);
  bad = good;
  bad["num_key_value_heads"] = 3;
  EXPECT_NE(error_of(bad).find("not a multiple of num_key_value_heads (3)"), std::string::npos);
  bad = good;
  bad.erase("model_type");
  EXPECT_NE(error_of(bad).find("key 'model_type' is missing"), std::string::npos);
  bad = good;
  bad["rope_scaling"] = {{"type", "bogus"}};
  EXPECT_NE(error_of(bad).find("rope_scaling type 'bogus' is not supported"), std::string::npos);
  bad = good;
  bad["rope_parameters"] = {{"rope_type", "bogus"}, {"rope_theta", 1e6}};
  EXPECT_NE(error_of(bad).find("rope_parameters type 'bogus' is not supported"), std::string::npos);
  bad = good;
  bad["model_type"] = "qwen3";
  bad["num_key_value_heads"] = 4;  // Qwen3Config's default, 32, would not divide the 4 heads
  bad["use_sliding_window"] = true;
  bad["layer_types"] = {"full_attention"};
  EXPECT_NE(error_of(bad).find("key 'layer_types' must list one type per layer (2)"), std::string::npos);
  bad = good;
  bad["model_type"] = "mistral";
  bad["num_key_value_heads"] = 4;
  bad["sliding_window"] = 0;
  EXPECT_NE(error_of(bad).find("key 'sliding_window' must be a positive integer, found 0"), std::string::npos);
  bad = good;
  bad["hidden_act"] = "gelu";
  EXPECT_NE(error_of(bad).find("hidden_act 'gelu'"), std::string::npos);
}

// A key config.json leaves out takes the default of the model type's transformers config
// class (LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config), an explicit null is None.
TEST(LlamaConfigParsing, MissingKeysTakeTheDefaultsOfTransformersConfigClasses) {
  const nlohmann::json minimal = {{"num_hidden_layers", 2}};
  const auto parse = [&](const std::string& type, nlohmann::json fields = nlohmann::json::object()) {
    nlohmann::json json = minimal;
    json["model_type"] = type;
    json.update(fields);
    return parse_llama_config(json, "config.json");
  };
  const LlamaConfig llama = parse("llama");
  EXPECT_EQ(llama.vocab_size, 32000);
  EXPECT_EQ(llama.intermediate_size, 11008);
  EXPECT_EQ(llama.num_key_value_heads, 32);
  EXPECT_EQ(llama.head_dim, 128);
  EXPECT_EQ(llama.max_position_embeddings, 2048);
  EXPECT_FALSE(llama.sliding_window);

  // Found in use: a Mistral config without sliding_window has transformers' 4096 on every layer.
  const LlamaConfig mistral = parse("mistral");
  EXPECT_EQ(mistral.sliding_window, 4096);
  EXPECT_TRUE(mistral.layer_uses_window(0) && mistral.layer_uses_window(1));
  EXPECT_EQ(mistral.num_key_value_heads, 8);
  EXPECT_EQ(mistral.intermediate_size, 14336);
  EXPECT_EQ(mistral.max_position_embeddings, 131072);
  EXPECT_FALSE(parse("mistral", {{"sliding_window", nullptr}}).sliding_window) << "null is None: no window";
  EXPECT_EQ(parse("mistral", {{"num_key_value_heads", nullptr}}).num_key_value_heads, 32) << "null: the heads";

  // And a Qwen2 config with use_sliding_window and no sliding_window: 4096 from layer 28 on.
  const LlamaConfig qwen2 = parse("qwen2", {{"use_sliding_window", true}, {"num_hidden_layers", 30}});
  EXPECT_EQ(qwen2.sliding_window, 4096);
  EXPECT_FALSE(qwen2.layer_uses_window(27));
  EXPECT_TRUE(qwen2.layer_uses_window(28));
  EXPECT_EQ(qwen2.vocab_size, 151936);
  EXPECT_TRUE(qwen2.qkv_bias && !qwen2.o_bias);
  EXPECT_FALSE(parse("qwen2").sliding_window) << "use_sliding_window defaults to false";

  const LlamaConfig qwen3 = parse("qwen3", {{"hidden_size", 1024}, {"num_attention_heads", 16}, {"num_key_value_heads", 8}});
  EXPECT_EQ(qwen3.head_dim, 128) << "Qwen3Config's own default, not hidden / heads = 64";
  EXPECT_EQ(parse("qwen3").num_key_value_heads, 32);
  EXPECT_EQ(qwen3.max_position_embeddings, 32768);
  EXPECT_TRUE(qwen3.qk_norm);
  EXPECT_FALSE(qwen3.qkv_bias);
  EXPECT_EQ(parse("qwen3", {{"hidden_size", 1024}, {"num_attention_heads", 16}, {"num_key_value_heads", 8}, {"head_dim", nullptr}}).head_dim,
            64);
  const LlamaConfig typed = parse("qwen3", {{"use_sliding_window", true}, {"sliding_window", 8},
                                            {"layer_types", {"sliding_attention", "full_attention"}}});
  EXPECT_TRUE(typed.layer_uses_window(0));
  EXPECT_FALSE(typed.layer_uses_window(1));
  EXPECT_FALSE(parse("qwen3", {{"layer_types", {"sliding_attention", "full_attention"}}}).sliding_window)
      << "layer types without use_sliding_window: no window (Qwen3Config sets sliding_window to None)";

  // transformers 5 writes rope_parameters; 4 wrote rope_theta and rope_scaling.
  EXPECT_EQ(parse("qwen3", {{"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e6}}}}).rope_theta, 1e6);
  EXPECT_FALSE(parse("qwen3", {{"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e6}}}}).rope_scaling);
  const LlamaConfig llama31 = parse("llama", {{"rope_parameters", {{"rope_type", "llama3"}, {"rope_theta", 5e5}, {"factor", 32.0},
                                                                   {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                                                                   {"original_max_position_embeddings", 8192}}}});
  EXPECT_EQ(llama31.rope_theta, 5e5);
  ASSERT_TRUE(llama31.rope_scaling);
  EXPECT_EQ(llama31.rope_scaling->factor, 32.0);
  EXPECT_EQ(parse("llama", {{"rope_theta", 5e5}}).rope_theta, 5e5);
}

TEST(LlamaModelLoading, ShapeMismatchAndMissingTensorsAreNamed) {
  const auto config = tiny_config("llama");
  Weights weights = random_weights(config, 1);
  weights["model.layers.1.mlp.up_proj.weight"] = torch::randn({95, 64});
  ModelOptions options;
  try {
    LlamaModel model(config, lookup_in(weights), options, "ckpt");
    FAIL() << "no error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("ckpt: tensor 'model.layers.1.mlp.up_proj.weight' has shape [95, 64], the config implies [96, 64]"),
              std::string::npos) << error.what();
  }
  weights = random_weights(config, 1);
  weights.erase("model.norm.weight");
  EXPECT_THROW(LlamaModel(config, lookup_in(weights), options, "ckpt"), Error);
}

TEST(LlamaModelLoading, OnlyTheTargetAdaptersAreParameters) {
  const auto config = tiny_config("llama");
  const Weights weights = random_weights(config, 1);
  ModelOptions options;
  options.lora = {.r = 4, .alpha = 8};
  options.target_modules = {"q_proj", "v_proj"};
  LlamaModel model(config, lookup_in(weights), options, "test");
  EXPECT_EQ(model->parameters().size(), 2u * 2 * config.num_hidden_layers);
  options.target_modules = {"qkv"};
  EXPECT_THROW(LlamaModel(config, lookup_in(weights), options, "test"), Error);
}

TEST(LlamaModelLoading, FreshAdaptersLeaveTheLogitsBitIdentical) {
  const auto config = tiny_config("qwen2");
  const Weights weights = random_weights(config, 3);
  const auto ids = sample_ids(2, 7, config.vocab_size);
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    ModelOptions options;
    options.compute_dtype = dtype;
    LlamaModel base(config, lookup_in(weights), options, "test");
    options.lora = {.r = 8, .alpha = 16};
    LlamaModel adapted(config, lookup_in(weights), options, "test");
    ASSERT_FALSE(adapted->parameters().empty());
    EXPECT_TRUE(torch::equal(adapted->forward(ids), base->forward(ids))) << dtype;
  }
}
