// Linear4bit and LoRA: forward and input gradient against a float Linear holding the
// dequantized weight, the fused one-token path, LoRA's neutral start (B = 0), LoRA gradients
// against finite differences in fp64, merge; DoRA against PEFT's formula in fp64, its norm
// reused until the adapter changes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>

#include "shardlora/nn/linear.h"
#include "shardlora/optim/adamw.h"

using namespace shardlora;
using namespace shardlora::nn;

namespace {

std::shared_ptr<Linear4bit> make_linear4bit(int64_t out, int64_t in, bool bias = false) {
  torch::manual_seed(3);
  std::optional<torch::Tensor> b;
  if (bias) b = torch::randn({out});
  return std::make_shared<Linear4bit>(quant::quantize(torch::randn({out, in}) * 0.05, {}), b);
}

// d loss / d parameter[i] (flattened) by central differences in fp64.
double central_difference(const torch::Tensor& parameter, int64_t i, const std::function<torch::Tensor()>& loss) {
  torch::NoGradGuard no_grad;
  auto flat = parameter.view(-1);
  const double saved = flat[i].item<double>(), h = 1e-6;
  flat[i] = saved + h;
  const double up = loss().item<double>();
  flat[i] = saved - h;
  const double down = loss().item<double>();
  flat[i] = saved;
  return (up - down) / (2 * h);
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
  for (const torch::Tensor& parameter : {adapted->lora_A, adapted->lora_B}) {
    const torch::Tensor analytic = parameter.grad().clone();
    for (int64_t i = 0; i < parameter.numel(); i += 7) {
      EXPECT_NEAR(analytic.view(-1)[i].item<double>(), central_difference(parameter, i, loss), 1e-7) << i;
    }
  }
}

TEST(Lora, MergedWeightIsTheBasePlusTheScaledProductWithinBf16Rounding) {
  auto base = make_linear4bit(48, 64);
  AdaptedLinear adapted(base, LoraOptions{.r = 8, .alpha = 16});
  {
    torch::NoGradGuard no_grad;
    adapted->lora_B.normal_(0, 0.05);
  }
  const torch::Tensor expected = base->dense_weight(torch::kFloat32) + torch::matmul(adapted->lora_B, adapted->lora_A).detach() * 2.0;
  EXPECT_TRUE(torch::equal(adapted->merged_weight(torch::kFloat32), expected));
  const torch::Tensor merged = adapted->merged_weight(torch::kBFloat16).to(torch::kFloat32);
  EXPECT_TRUE(((merged - expected).abs() <= expected.abs() * std::pow(2.0, -8)).all().item<bool>());
}

// DoRA against a reference written from PEFT's DoraLinearLayer (tuners/lora/dora.py) and
// Linear.forward / merge (tuners/lora/layer.py), in fp64 on the dequantized base:
//   weight_norm = ||W + scaling * (B A)||_row, detached; mag_norm_scale = m / weight_norm
//   result += (mag_norm_scale - 1) * base_result + mag_norm_scale * B(A(x)) * scaling
// base_result = result - bias without dropout or in eval, else x = dropout(x), F.linear(x, W).
namespace {

struct DoraReference {
  torch::Tensor weight, bias, A, B, magnitude;  // fp64 leaves; A, B, magnitude require grad
  double scaling, dropout;

  torch::Tensor forward(const torch::Tensor& input, bool training) const {
    torch::Tensor x = input;
    torch::Tensor result = torch::nn::functional::linear(x, weight, bias);
    const torch::Tensor lora_weight = torch::matmul(B, A);
    const torch::Tensor weight_norm = (weight + scaling * lora_weight.detach()).norm(2, {1}).detach();
    const torch::Tensor mag_norm_scale = (magnitude / weight_norm).view({1, -1});
    torch::Tensor base_result;
    if (dropout == 0 || !training) {
      base_result = result - bias;
    } else {
      x = torch::dropout(x, dropout, true);
      base_result = torch::nn::functional::linear(x, weight);
    }
    const torch::Tensor lora_result = torch::matmul(torch::matmul(x, A.t()), B.t());
    return result + ((mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling);
  }
};

AdaptedLinear trained_dora(const std::shared_ptr<Linear4bit>& base, double dropout) {
  AdaptedLinear adapted(base, LoraOptions{.r = 4, .alpha = 8, .dropout = dropout, .use_dora = true});
  torch::NoGradGuard no_grad;
  adapted->lora_B.normal_(0, 0.1);  // as if trained: every term of the formula is live
  adapted->lora_magnitude_vector.mul_(1 + 0.2 * torch::rand({base->out_features()}));
  return adapted;
}

DoraReference reference_of(const AdaptedLinear& adapted) {
  const auto leaf = [](const torch::Tensor& t) { return t.detach().to(torch::kFloat64).clone().requires_grad_(true); };
  return {adapted->base().dense_weight(torch::kFloat64), adapted->base().bias()->to(torch::kFloat64), leaf(adapted->lora_A),
          leaf(adapted->lora_B), leaf(adapted->lora_magnitude_vector), adapted->lora().scaling(), adapted->lora().dropout};
}

}  // namespace

TEST(Dora, MagnitudesStartAsTheRowNormsOfTheBaseAndLeaveItsOutputBitIdentical) {
  auto base = make_linear4bit(48, 64, /*bias=*/true);
  AdaptedLinear adapted(base, LoraOptions{.r = 8, .alpha = 16, .use_dora = true});
  ASSERT_EQ(adapted->parameters().size(), 3u);
  EXPECT_TRUE(torch::allclose(adapted->lora_magnitude_vector.to(torch::kFloat64), base->dense_weight(torch::kFloat64).norm(2, {1}),
                              1e-6, 0));
  const torch::Tensor x = torch::randn({2, 7, 64});
  EXPECT_TRUE(torch::equal(adapted->forward(x), base->forward(x)));
}

TEST(Dora, ForwardAndGradientsMatchPeftsFormulaInFp64WithAndWithoutDropout) {
  for (const double dropout : {0.0, 0.3}) {
    for (const bool training : {true, false}) {
      auto base = make_linear4bit(24, 32, /*bias=*/true);
      AdaptedLinear adapted = trained_dora(base, dropout);
      const DoraReference reference = reference_of(adapted);
      adapted->to(torch::kFloat64);
      adapted->train(training);
      const torch::Tensor x = torch::randn({3, 5, 32}, torch::kFloat64).requires_grad_(true);
      const torch::Tensor x_reference = x.detach().clone().requires_grad_(true);
      const torch::Tensor upstream = torch::randn({3, 5, 24}, torch::kFloat64);
      torch::manual_seed(17);  // the same dropout mask on both sides
      const torch::Tensor y = adapted->forward(x);
      torch::manual_seed(17);
      const torch::Tensor expected = reference.forward(x_reference, training);
      const std::string where = "dropout " + std::to_string(dropout) + (training ? ", training" : ", eval");
      EXPECT_LE((y - expected).abs().max().item<double>(), 1e-12) << where;
      (y * upstream).sum().backward();
      (expected * upstream).sum().backward();
      const std::vector<std::pair<torch::Tensor, torch::Tensor>> gradients = {
          {x.grad(), x_reference.grad()}, {adapted->lora_A.grad(), reference.A.grad()},
          {adapted->lora_B.grad(), reference.B.grad()}, {adapted->lora_magnitude_vector.grad(), reference.magnitude.grad()}};
      for (size_t i = 0; i < gradients.size(); ++i) {
        const auto& [ours, theirs] = gradients[i];
        ASSERT_TRUE(ours.defined()) << where << ", gradient " << i;
        EXPECT_LE((ours - theirs).abs().max().item<double>(), 1e-11 * (1 + theirs.abs().max().item<double>())) << where << ", gradient " << i;
      }
    }
  }
}

// The norm is detached: the magnitude's gradient is exact (finite differences), A's is not
// the derivative of the whole function (the norm depends on A): the two must differ.
TEST(Dora, OnlyTheMagnitudeGradientIsTheFullDerivative) {
  auto base = make_linear4bit(24, 32);
  AdaptedLinear adapted = trained_dora(base, 0.0);
  adapted->to(torch::kFloat64);
  const torch::Tensor x = torch::randn({3, 32}, torch::kFloat64);
  const torch::Tensor upstream = torch::randn({3, 24}, torch::kFloat64);
  const auto loss = [&] { return (adapted->forward(x) * upstream).sum(); };
  loss().backward();
  for (int64_t i = 0; i < 24; i += 5) {
    EXPECT_NEAR(adapted->lora_magnitude_vector.grad()[i].item<double>(), central_difference(adapted->lora_magnitude_vector, i, loss), 1e-7);
  }
  double largest_gap = 0;
  for (int64_t i = 0; i < adapted->lora_A.numel(); i += 7) {
    largest_gap = std::max(largest_gap, std::abs(adapted->lora_A.grad().view(-1)[i].item<double>() - central_difference(adapted->lora_A, i, loss)));
  }
  EXPECT_GT(largest_gap, 1e-4);
}

// The norm is computed once for each A and B (decoding and recomputation reuse it) and again
// after every change of either: the optimizer's kernels write through raw pointers.
TEST(Dora, TheNormFollowsEveryUpdateOfTheAdapter) {
  auto base = make_linear4bit(24, 32, /*bias=*/true);
  AdaptedLinear adapted = trained_dora(base, 0.0);
  const torch::Tensor x = torch::randn({3, 32});
  optim::AdamWOptions options;
  options.lr = 0.05;
  optim::AdamW optimizer(adapted->parameters(), options);
  torch::Tensor previous;
  for (int step = 0; step < 3; ++step) {
    const torch::Tensor y = adapted->forward(x);
    {
      torch::NoGradGuard no_grad;
      const torch::Tensor expected = reference_of(adapted).forward(x.to(torch::kFloat64), false);
      EXPECT_LE((y.to(torch::kFloat64) - expected).abs().max().item<double>(), 1e-5 * expected.abs().max().item<double>()) << "step " << step;
      EXPECT_TRUE(torch::equal(adapted->forward(x), y)) << "the same norm again, step " << step;
      if (previous.defined()) EXPECT_GT((y - previous).abs().max().item<double>(), 1e-3) << "the step moved the adapter";
      previous = y.detach();
    }
    (y * y).sum().backward();
    optimizer.step();
    optimizer.zero_grad();
  }
}

// PEFT's merge: W' = (m / ||W + dW||_row) * (W + dW); the merged Linear computes the adapted one.
TEST(Dora, MergedWeightGivesTheAdaptedOutputWithinFp32Rounding) {
  auto base = make_linear4bit(48, 64, /*bias=*/true);
  AdaptedLinear adapted = trained_dora(base, 0.1);
  adapted->eval();
  const DoraReference reference = reference_of(adapted);
  const torch::Tensor combined = reference.weight + torch::matmul(reference.B, reference.A).detach() * reference.scaling;
  const torch::Tensor expected = (reference.magnitude.detach() / combined.norm(2, {1})).view({-1, 1}) * combined;
  const torch::Tensor merged = adapted->merged_weight(torch::kFloat32);
  EXPECT_LE((merged.to(torch::kFloat64) - expected).abs().max().item<double>(), 1e-6 * expected.abs().max().item<double>());
  const torch::Tensor x = torch::randn({4, 64});
  torch::NoGradGuard no_grad;
  const torch::Tensor adapted_output = adapted->forward(x);
  const torch::Tensor merged_output = torch::matmul(x, merged.t()) + *base->bias();
  EXPECT_LE((adapted_output - merged_output).abs().max().item<double>(), 1e-5 * adapted_output.abs().max().item<double>());
}
