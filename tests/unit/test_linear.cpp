// Linear4bit and LoRA: forward and input gradient against a float Linear holding the
// dequantized weight, the fused one-token path, LoRA's neutral start (B = 0), LoRA gradients
// against finite differences in fp64, merge / unmerge.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "shardlora/nn/linear.h"

using namespace shardlora;
using namespace shardlora::nn;

namespace {

std::shared_ptr<Linear4bit> make_linear4bit(int64_t out, int64_t in, bool bias = false) {
  torch::manual_seed(3);
  std::optional<torch::Tensor> b;
  if (bias) b = torch::randn({out});
  return std::make_shared<Linear4bit>(quant::quantize(torch::randn({out, in}) * 0.05, {}), b);
}

}  // namespace

TEST(Linear4bit, ForwardEqualsMatmulWithDequantizedWeight) {
  auto linear = make_linear4bit(48, 64, /*bias=*/true);
  const torch::Tensor x = torch::randn({3, 5, 64});
  const torch::Tensor w = linear->dense_weight(torch::kFloat32);
  EXPECT_TRUE(torch::equal(linear->forward(x), torch::matmul(x, w.t()) + *linear->bias()));
  EXPECT_EQ(linear->in_features(), 64);
  EXPECT_EQ(linear->out_features(), 48);
}

TEST(Linear4bit, InputGradientEqualsFloatLinearWithDequantizedWeight) {
  auto linear = make_linear4bit(48, 64);
  const torch::Tensor w = linear->dense_weight(torch::kFloat32);
  const torch::Tensor x = torch::randn({4, 64}, torch::requires_grad());
  const torch::Tensor upstream = torch::randn({4, 48});
  (linear->forward(x) * upstream).sum().backward();
  const torch::Tensor x_float = x.detach().clone().requires_grad_(true);
  (torch::matmul(x_float, w.t()) * upstream).sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), x_float.grad(), 1e-6, 1e-6));
}

TEST(Linear4bit, OneTokenFusedPathMatchesMatmul) {
  auto linear = make_linear4bit(96, 128);
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    const torch::Tensor x = torch::randn({1, 1, 128}).to(dtype);
    const torch::Tensor expected = torch::matmul(x.to(torch::kFloat32), linear->dense_weight(torch::kFloat32).t());
    torch::NoGradGuard no_grad;  // inference: the fused gemv runs
    const torch::Tensor y = linear->forward(x);
    EXPECT_EQ(y.sizes(), expected.sizes());
    EXPECT_TRUE(torch::allclose(y.to(torch::kFloat32), expected, dtype == torch::kFloat32 ? 1e-5 : 1e-2, 1e-3));
  }
}

TEST(Lora, ZeroInitializedBLeavesTheBaseOutputBitIdentical) {
  auto base = make_linear4bit(48, 64);
  AdaptedLinear adapted(base, LoraOptions{.r = 8, .alpha = 16});
  ASSERT_TRUE(adapted->has_adapter());
  EXPECT_EQ(adapted->lora_A.sizes(), (std::vector<int64_t>{8, 64}));
  EXPECT_EQ(adapted->lora_B.sizes(), (std::vector<int64_t>{48, 8}));
  EXPECT_TRUE(torch::equal(adapted->lora_B, torch::zeros({48, 8})));
  // kaiming_uniform(a = sqrt 5) bounds A by 1 / sqrt(in).
  EXPECT_LE(adapted->lora_A.abs().max().item<double>(), 1.0 / std::sqrt(64.0));
  const torch::Tensor x = torch::randn({2, 7, 64});
  EXPECT_TRUE(torch::equal(adapted->forward(x), base->forward(x)));
  EXPECT_EQ(adapted->parameters().size(), 2u) << "only the adapter is trainable";
}

TEST(Lora, ScalingFollowsPeft) {
  EXPECT_DOUBLE_EQ((LoraOptions{.r = 16, .alpha = 32}.scaling()), 2.0);
  EXPECT_DOUBLE_EQ((LoraOptions{.r = 16, .alpha = 32, .use_rslora = true}.scaling()), 8.0);
}

TEST(Lora, GradientsMatchFiniteDifferencesInFp64) {
  auto base = make_linear4bit(24, 32, /*bias=*/true);
  AdaptedLinear adapted(base, LoraOptions{.r = 4, .alpha = 8});
  {
    torch::NoGradGuard no_grad;
    adapted->lora_B.normal_(0, 0.1);  // away from the neutral start, so both gradients are informative
  }
  adapted->to(torch::kFloat64);
  const torch::Tensor x = torch::randn({3, 32}, torch::kFloat64);
  const torch::Tensor upstream = torch::randn({3, 24}, torch::kFloat64);
  const auto loss = [&] { return (adapted->forward(x) * upstream).sum(); };
  loss().backward();
  for (torch::Tensor* parameter : {&adapted->lora_A, &adapted->lora_B}) {
    const torch::Tensor analytic = parameter->grad().clone();
    torch::NoGradGuard no_grad;
    auto flat = parameter->view(-1);
    for (int64_t i = 0; i < flat.numel(); i += 7) {
      const double saved = flat[i].item<double>(), h = 1e-6;
      flat[i] = saved + h;
      const double up = loss().item<double>();
      flat[i] = saved - h;
      const double down = loss().item<double>();
      flat[i] = saved;
      EXPECT_NEAR(analytic.view(-1)[i].item<double>(), (up - down) / (2 * h), 1e-7) << i;
    }
  }
}

TEST(Lora, MergeThenUnmergeRestoresTheWeightWithinBf16Rounding) {
  auto base = make_linear4bit(48, 64);
  AdaptedLinear adapted(base, LoraOptions{.r = 8, .alpha = 16});
  {
    torch::NoGradGuard no_grad;
    adapted->lora_B.normal_(0, 0.05);
  }
  const torch::Tensor original = base->dense_weight(torch::kFloat32);
  const torch::Tensor merged = adapted->merged_weight(torch::kBFloat16);
  const torch::Tensor delta = torch::matmul(adapted->lora_B, adapted->lora_A).detach() * 2.0;
  EXPECT_TRUE(torch::allclose(merged.to(torch::kFloat32), original + delta, 1e-2, 1e-3));
  const torch::Tensor restored = adapted->unmerge(merged).to(torch::kFloat32);
  // Two bf16 roundings of values near |W + delta|.
  const torch::Tensor bound = (original.abs() + delta.abs() + 1e-3) * (2 * std::pow(2.0, -8));
  EXPECT_TRUE(((restored - original).abs() <= bound).all().item<bool>());
}
