#include "shardlora/nn/generation.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>

#include "shardlora/kernels/check.h"

namespace shardlora::nn {
namespace {

// The next token from the last position's logits [vocab] (float32, on the CPU).
int64_t choose(torch::Tensor logits, const GenerationOptions& options, at::Generator& generator) {
  if (options.temperature <= 0) return logits.argmax().item<int64_t>();
  logits = logits / options.temperature;
  if (options.top_k > 0 && options.top_k < logits.numel()) {
    const double kth = std::get<0>(logits.topk(options.top_k)).min().item<double>();
    logits = logits.masked_fill(logits < kth, -std::numeric_limits<float>::infinity());
  }
  torch::Tensor probs = torch::softmax(logits, -1);
  if (options.top_p < 1.0) {
    // HF TopPLogitsWarper: drop the tail whose cumulative probability exceeds top_p, keep at least one.
    const auto [sorted, order] = probs.sort(-1, /*descending=*/true);
    const torch::Tensor before = sorted.cumsum(-1) - sorted;
    const torch::Tensor drop = before >= options.top_p;
    probs = probs.scatter(0, order, sorted.masked_fill(drop, 0.0));
  }
  return torch::multinomial(probs, 1, false, generator).item<int64_t>();
}

}  // namespace

std::vector<int64_t> generate(LlamaModel& model, const std::vector<int64_t>& prompt, const GenerationOptions& options) {
  SHARDLORA_CHECK(!prompt.empty(), "generate: empty prompt");
  SHARDLORA_CHECK(options.top_p > 0 && options.top_p <= 1, "generate: top_p must be in (0, 1]");
  const int64_t vocab = model->config().vocab_size;
  for (const int64_t id : prompt) {
    SHARDLORA_CHECK(id >= 0 && id < vocab, "generate: prompt token id ", id, " is outside the vocabulary [0, ", vocab, ")");
  }
  SHARDLORA_CHECK(std::isfinite(options.temperature) && options.temperature >= 0, "generate: temperature must be a finite number >= 0, not ",
                  options.temperature);
  // Checked before the KV cache grows: a long prompt would otherwise allocate for all of it.
  const int64_t positions = model->config().max_position_embeddings;
  SHARDLORA_CHECK(static_cast<int64_t>(prompt.size()) < positions, "generate: the prompt is ", prompt.size(),
                  " tokens, the model's max_position_embeddings is ", positions);
  torch::NoGradGuard no_grad;
  model->eval();
  at::Generator generator = at::detail::createCPUGenerator(options.seed);
  KvCache cache;
  ForwardOptions forward;
  forward.cache = &cache;
  std::vector<int64_t> generated;
  torch::Tensor input = torch::tensor(prompt, torch::kInt64).view({1, -1});
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    const torch::Tensor logits = model->next_token_logits(input, forward);
    const int64_t token = choose(logits[0].to(torch::kCPU), options, generator);
    generated.push_back(token);
    if (std::find(options.eos_token_ids.begin(), options.eos_token_ids.end(), token) != options.eos_token_ids.end()) break;
    input = torch::tensor({token}, torch::kInt64).view({1, 1});
  }
  return generated;
}

}  // namespace shardlora::nn
