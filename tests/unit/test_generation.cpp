// Generation: the KV cache changes nothing (greedy equals step-by-step full recomputation,
// logits equal), stopping on EOS, and the sampling controls.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "random_llama.h"
#include "shardlora/nn/generation.h"

using namespace shardlora;
using namespace shardlora::nn;
using namespace shardlora::testing;

namespace {

LlamaModel make_model() {
  static const Weights weights = random_weights(tiny_config("llama"), 21);
  ModelOptions options;
  options.compute_dtype = torch::kFloat32;
  return LlamaModel(tiny_config("llama"), lookup_in(weights), options, "test");
}

const std::vector<int64_t> kPrompt = {3, 17, 5, 29, 11};

void expect_cached_logits_equal_full(LlamaModel& model) {
  torch::NoGradGuard no_grad;
  const torch::Tensor ids = torch::randint(40, {2, 10}, torch::kInt64);
  const torch::Tensor full = model->forward(ids);
  KvCache cache;
  // A prefill, three tokens at once after it (masked), then one at a time (over every held key).
  std::vector<torch::Tensor> pieces = {model->forward(ids.narrow(1, 0, 4), {.cache = &cache}),
                                       model->forward(ids.narrow(1, 4, 3), {.cache = &cache})};
  for (int64_t t = 7; t < 10; ++t) pieces.push_back(model->forward(ids.narrow(1, t, 1), {.cache = &cache}));
  EXPECT_EQ(cache.length, 10);
  EXPECT_TRUE(torch::allclose(torch::cat(pieces, 1), full, 1e-5, 1e-5)) << std::get<0>((torch::cat(pieces, 1) - full).abs().max(-1));
  // A windowed layer keeps the window - 1 tokens a next token may see, a full layer all of them.
  const LlamaConfig& config = model->config();
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    EXPECT_EQ(cache.held(layer), config.layer_uses_window(layer) ? *config.sliding_window - 1 : 10) << "layer " << layer;
  }
}

}  // namespace

TEST(Generation, GreedyWithCacheEqualsFullRecomputation) {
  auto model = make_model();
  const auto generated = generate(model, kPrompt, {.max_new_tokens = 12});
  ASSERT_EQ(generated.size(), 12u);
  torch::NoGradGuard no_grad;
  std::vector<int64_t> sequence = kPrompt;
  for (int64_t expected : generated) {
    const torch::Tensor logits = model->forward(torch::tensor(sequence).view({1, -1}));
    EXPECT_EQ(logits[0][-1].argmax().item<int64_t>(), expected);
    sequence.push_back(expected);
  }
}

TEST(Generation, CachedLogitsEqualFullLogits) {
  // Sliding windows must hold across the cached prefix as well: Mistral's (3 tokens, every
  // layer; shorter than the prefill) and Gemma 3's (4 tokens on its local layers, beside a
  // full one).
  auto mistral_config = tiny_config("llama");
  mistral_config.model_type = "mistral";
  mistral_config.sliding_window = 3;
  const auto gemma_config = tiny_config("gemma3_text", {{"num_hidden_layers", 3}, {"sliding_window", 4}, {"sliding_window_pattern", 3}});
  const Weights mistral_weights = random_weights(mistral_config, 22), gemma_weights = random_weights(gemma_config, 23);
  ModelOptions options;
  options.compute_dtype = torch::kFloat32;
  for (auto model : {make_model(), LlamaModel(mistral_config, lookup_in(mistral_weights), options, "test"),
                     LlamaModel(gemma_config, lookup_in(gemma_weights), options, "test")}) {
    expect_cached_logits_equal_full(model);
  }
}

TEST(Generation, StopsAtEndOfSequence) {
  auto model = make_model();
  const auto free_run = generate(model, kPrompt, {.max_new_tokens = 8});
  const auto stopped = generate(model, kPrompt, {.max_new_tokens = 8, .eos_token_ids = {free_run[2]}});
  const auto first_eos = std::find(free_run.begin(), free_run.end(), free_run[2]) - free_run.begin();
  EXPECT_EQ(stopped.size(), static_cast<size_t>(first_eos + 1));
  EXPECT_EQ(stopped.back(), free_run[2]);
}

TEST(Generation, SamplingControls) {
  auto model = make_model();
  const auto greedy = generate(model, kPrompt, {.max_new_tokens = 10});
  EXPECT_EQ(generate(model, kPrompt, {.max_new_tokens = 10, .temperature = 1.0, .top_k = 1, .seed = 5}), greedy);
  EXPECT_EQ(generate(model, kPrompt, {.max_new_tokens = 10, .temperature = 1.0, .top_p = 1e-6, .seed = 5}), greedy);
  const GenerationOptions sampled{.max_new_tokens = 10, .temperature = 1.5, .seed = 42};
  EXPECT_EQ(generate(model, kPrompt, sampled), generate(model, kPrompt, sampled)) << "same seed, same tokens";
  bool any_different = false;
  for (uint64_t seed = 1; seed < 6 && !any_different; ++seed) {
    any_different = generate(model, kPrompt, {.max_new_tokens = 10, .temperature = 1.5, .seed = seed}) != greedy;
  }
  EXPECT_TRUE(any_different) << "sampling at temperature 1.5 never left the greedy path";
  EXPECT_THROW(generate(model, {}, {}), Error);
}
