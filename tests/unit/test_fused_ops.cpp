// The fused ops bound as autograd functions (nn/fused_ops.h) against the op chains they
// replace (nn::reference, run in float64 as the higher-precision reference): forward values
// and every input's gradient within fp32 rounding, bf16 within bf16 rounding; the chunked
// linear cross-entropy at every chunk size, with ignored targets, equal to the unchunked loss.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "shardlora/kernels/check.h"
#include "shardlora/nn/fused_ops.h"

using namespace shardlora;

namespace {

// max |a - b| <= rel * max |b| (+ a floor for values that are all ~0).
void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, double rel, const std::string& what) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const double scale = expected.abs().max().item<double>();
  const double error = (actual.to(torch::kFloat64) - expected.to(torch::kFloat64)).abs().max().item<double>();
  EXPECT_LE(error, rel * scale + 1e-12) << what << ": max error " << error << " at scale " << scale;
}

// Gradients of sum(f(inputs) * upstream) for each input, with inputs cast to `dtype`.
std::vector<torch::Tensor> gradients(const std::function<torch::Tensor(const std::vector<torch::Tensor>&)>& f,
                                     const std::vector<torch::Tensor>& inputs, torch::ScalarType dtype, const torch::Tensor& upstream,
                                     torch::Tensor* value) {
  std::vector<torch::Tensor> leaves, cast;
  for (const auto& input : inputs) {
    leaves.push_back(input.to(dtype).detach().requires_grad_(true));
    cast.push_back(leaves.back() * 1);  // not a leaf: the fused RoPE rotates its input in place
  }
  const torch::Tensor out = f(cast);
  *value = out.detach();
  (out * upstream.to(out.scalar_type())).sum().backward();
  std::vector<torch::Tensor> grads;
  for (const auto& leaf : leaves) grads.push_back(leaf.grad());
  return grads;
}

using Op = std::function<torch::Tensor(const std::vector<torch::Tensor>&)>;

// fused(dtype) against reference(float64), forward and backward.
void check_against_reference(const Op& fused, const Op& reference, const std::vector<torch::Tensor>& inputs, torch::ScalarType dtype,
                             double rel, const std::string& what) {
  torch::Tensor fused_value, reference_value;
  const torch::Tensor probe = reference(inputs);
  const torch::Tensor upstream = torch::randn(probe.sizes(), torch::kFloat64);
  const auto fused_grads = gradients(fused, inputs, dtype, upstream, &fused_value);
  const auto reference_grads = gradients(reference, inputs, torch::kFloat64, upstream, &reference_value);
  expect_close(fused_value, reference_value, rel, what + " forward");
  for (size_t i = 0; i < inputs.size(); ++i) {
    expect_close(fused_grads[i], reference_grads[i], rel, what + " gradient " + std::to_string(i));
  }
}

constexpr double kFp32 = 2e-6, kBf16 = 2e-2;

TEST(FusedOps, RmsNormMatchesTheOpChainForwardAndBackward) {
  torch::manual_seed(1);
  const std::vector<torch::Tensor> inputs = {torch::randn({3, 5, 100}, torch::kFloat64) * 3, torch::randn({100}, torch::kFloat64)};
  const Op fused = [](const auto& t) { return nn::rms_norm(t[0], t[1], 1e-5); };
  const Op reference = [](const auto& t) { return nn::reference::rms_norm(t[0], t[1], 1e-5); };
  check_against_reference(fused, reference, inputs, torch::kFloat32, kFp32, "fp32");
  check_against_reference(fused, reference, inputs, torch::kBFloat16, kBf16, "bf16");
}

TEST(FusedOps, SwigluMatchesTheOpChainForwardAndBackward) {
  torch::manual_seed(2);
  const std::vector<torch::Tensor> inputs = {torch::randn({4, 7, 99}, torch::kFloat64) * 4, torch::randn({4, 7, 99}, torch::kFloat64)};
  const Op fused = [](const auto& t) { return nn::swiglu(t[0], t[1]); };
  const Op reference = [](const auto& t) { return nn::reference::swiglu(t[0], t[1]); };
  check_against_reference(fused, reference, inputs, torch::kFloat32, kFp32, "fp32");
  check_against_reference(fused, reference, inputs, torch::kBFloat16, kBf16, "bf16");
}

TEST(FusedOps, RopeMatchesTheOpChainForwardAndBackward) {
  torch::manual_seed(3);
  const int64_t heads = 3, head_dim = 14;
  const torch::Tensor angles = torch::randn({2, 6, head_dim / 2}, torch::kFloat64) * 3;
  const torch::Tensor x = torch::randn({2, 6, heads * head_dim}, torch::kFloat64);
  // The tables are inputs without gradient: close over them.
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    const torch::Tensor cos = angles.cos().to(dtype), sin = angles.sin().to(dtype);
    const Op fused = [&](const auto& t) { return nn::apply_rope(t[0], cos, sin, heads); };
    const Op reference = [&](const auto& t) {
      return nn::reference::apply_rope(t[0], cos.to(torch::kFloat64), sin.to(torch::kFloat64), heads);
    };
    check_against_reference(fused, reference, {x}, dtype, dtype == torch::kFloat32 ? kFp32 : kBf16, torch::toString(dtype));
  }
}

TEST(FusedOps, RopeRotatesInPlaceAndKeepsAutogradConsistent) {
  const torch::Tensor x = torch::randn({1, 3, 8}).requires_grad_(true);
  torch::Tensor y = x * 2;
  const torch::Tensor cos = torch::randn({1, 3, 4}), sin = torch::randn({1, 3, 4});
  const void* storage = y.data_ptr();
  const torch::Tensor rotated = nn::apply_rope(y, cos, sin, 1);
  EXPECT_EQ(rotated.data_ptr(), storage) << "the fused RoPE rotates its input in place";
  rotated.sum().backward();
  const torch::Tensor leaf = x.detach().clone().requires_grad_(true);
  nn::reference::apply_rope(leaf * 2, cos, sin, 1).sum().backward();
  expect_close(x.grad(), leaf.grad(), kFp32, "gradient through the in-place rotation");
}

TEST(FusedOps, ChunkedLinearCrossEntropyEqualsTheUnchunkedLossAtEveryChunkSize) {
  torch::manual_seed(4);
  const int64_t rows = 37, hidden = 24, vocab = 301;
  const torch::Tensor h = torch::randn({rows, hidden}, torch::kFloat64), w = torch::randn({vocab, hidden}, torch::kFloat64) * 0.5;
  torch::Tensor targets = torch::randint(vocab, {rows}, torch::kInt64);
  targets.index_put_({torch::arange(0, rows, 4)}, -100);  // every fourth row ignored
  const auto loss_and_grads = [&](auto&& loss_fn, torch::ScalarType dtype) {
    const torch::Tensor hl = h.to(dtype).detach().requires_grad_(true), wl = w.to(dtype).detach().requires_grad_(true);
    const nn::SummedLoss loss = loss_fn(hl, wl);
    (loss.sum * 0.75).backward();  // a non-unit upstream gradient
    return std::make_tuple(loss.sum.detach(), loss.count, hl.grad(), wl.grad());
  };
  const auto [ref_sum, ref_count, ref_dh, ref_dw] =
      loss_and_grads([&](const auto& a, const auto& b) { return nn::reference::linear_cross_entropy(a, b, targets); }, torch::kFloat64);
  EXPECT_EQ(ref_count.item<int64_t>(), rows - 10);
  for (const int64_t chunk : {int64_t{0}, int64_t{1}, int64_t{5}, int64_t{36}, rows, int64_t{100}}) {
    const std::string what = "chunk " + std::to_string(chunk);
    const auto [sum, count, dh, dw] =
        loss_and_grads([&](const auto& a, const auto& b) { return nn::linear_cross_entropy(a, b, targets, chunk); }, torch::kFloat32);
    EXPECT_EQ(count.item<int64_t>(), ref_count.item<int64_t>()) << what;
    EXPECT_EQ(count.scalar_type(), torch::kInt64);
    expect_close(sum, ref_sum, kFp32 * 4, what + " loss");
    expect_close(dh, ref_dh, kFp32 * 4, what + " d hidden");
    expect_close(dw, ref_dw, kFp32 * 4, what + " d weight");
  }
  const auto [sum16, count16, dh16, dw16] =
      loss_and_grads([&](const auto& a, const auto& b) { return nn::linear_cross_entropy(a, b, targets); }, torch::kBFloat16);
  expect_close(sum16, ref_sum, kBf16, "bf16 loss");
  expect_close(dh16, ref_dh, kBf16 * 2, "bf16 d hidden");
}

TEST(FusedOps, LinearCrossEntropyWithoutGradientLeavesNoneAndRejectsMismatchedShapes) {
  const torch::Tensor h = torch::randn({4, 8}), w = torch::randn({16, 8});
  const torch::Tensor targets = torch::tensor({1, -100, 3, 15}, torch::kInt64);
  torch::NoGradGuard no_grad;
  const nn::SummedLoss loss = nn::linear_cross_entropy(h, w, targets);
  expect_close(loss.sum, nn::reference::linear_cross_entropy(h, w, targets).sum, kFp32, "loss");
  EXPECT_EQ(loss.count.item<int64_t>(), 3);
  EXPECT_THROW(nn::linear_cross_entropy(h, torch::randn({16, 9}), targets), Error);
  EXPECT_THROW(nn::linear_cross_entropy(h, w, targets.narrow(0, 0, 3)), Error);
}

TEST(FusedOps, Float64TakesTheOpChains) {
  const torch::Tensor x = torch::randn({2, 8}, torch::kFloat64), w = torch::randn({8}, torch::kFloat64);
  EXPECT_FALSE(nn::fused_ops_apply(x));
  EXPECT_TRUE(torch::equal(nn::rms_norm(x, w, 1e-6), nn::reference::rms_norm(x, w, 1e-6)));
  EXPECT_TRUE(nn::fused_ops_apply(x.to(torch::kBFloat16)));
}

}  // namespace
