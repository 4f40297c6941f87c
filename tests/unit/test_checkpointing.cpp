// Activation checkpointing changes memory, not results: logits and every adapter gradient
// equal those of the plain backward, bit for bit on the CPU, with LoRA dropout and DoRA too.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "random_llama.h"

using namespace shardlora;
using namespace shardlora::nn;
using namespace shardlora::testing;

namespace {

std::vector<torch::Tensor> gradients(bool checkpointing, double dropout, bool dora, torch::Tensor* logits) {
  static const Weights weights = random_weights(tiny_config("llama"), 31);
  ModelOptions options;
  options.compute_dtype = torch::kFloat32;
  options.lora = {.r = 4, .alpha = 8, .dropout = dropout, .use_dora = dora};
  options.activation_checkpointing = checkpointing;
  torch::manual_seed(1);  // same adapter initialisation in both models
  LlamaModel model(tiny_config("llama"), lookup_in(weights), options, "test");
  {
    torch::NoGradGuard no_grad;
    for (auto& parameter : model->parameters()) parameter.normal_(0, 0.05);
  }
  model->train();
  torch::manual_seed(2);  // same dropout masks
  const torch::Tensor ids = torch::randint(40, {2, 8}, torch::kInt64);
  *logits = model->forward(ids);
  torch::nn::functional::cross_entropy(logits->view({-1, 40}), ids.view({-1})).backward();
  std::vector<torch::Tensor> grads;
  for (const auto& parameter : model->parameters()) grads.push_back(parameter.grad().clone());
  return grads;
}

}  // namespace

TEST(ActivationCheckpointing, GradientsEqualThePlainBackward) {
  for (const bool dora : {false, true}) {
    for (const double dropout : {0.0, 0.1}) {
      const std::string where = std::string(dora ? "DoRA" : "LoRA") + ", dropout " + std::to_string(dropout);
      torch::Tensor plain_logits, checkpointed_logits;
      const auto plain = gradients(false, dropout, dora, &plain_logits);
      const auto checkpointed = gradients(true, dropout, dora, &checkpointed_logits);
      EXPECT_TRUE(torch::equal(plain_logits, checkpointed_logits)) << where;
      ASSERT_EQ(plain.size(), checkpointed.size());
      EXPECT_EQ(plain.size(), (dora ? 3u : 2u) * 7 * tiny_config("llama").num_hidden_layers);
      for (size_t i = 0; i < plain.size(); ++i) {
        EXPECT_TRUE(torch::equal(plain[i], checkpointed[i])) << "parameter " << i << ", " << where;
        EXPECT_GT(plain[i].abs().sum().item<double>(), 0.0) << "parameter " << i << " got no gradient";
      }
    }
  }
}
