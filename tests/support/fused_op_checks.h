// Checks shared by the fused ops' tests on the CPU and on a GPU: a fused op against the op
// chain it replaces, run in float64 on the CPU as the higher-precision reference.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace shardlora::testing {

// max |a - b| <= rel * max |b| (+ a floor for values that are all ~0).
inline void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, double rel, const std::string& what) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const double scale = expected.abs().max().item<double>();
  const double error = (actual.to(torch::kCPU, torch::kFloat64) - expected.to(torch::kCPU, torch::kFloat64)).abs().max().item<double>();
  EXPECT_LE(error, rel * scale + 1e-12) << what << ": max error " << error << " at scale " << scale;
}

using Op = std::function<torch::Tensor(const std::vector<torch::Tensor>&)>;

// Gradients of sum(f(inputs) * upstream) for each input, with inputs cast to `dtype` on `device`.
inline std::vector<torch::Tensor> gradients(const Op& f, const std::vector<torch::Tensor>& inputs, torch::ScalarType dtype,
                                            torch::Device device, const torch::Tensor& upstream, torch::Tensor* value) {
  std::vector<torch::Tensor> leaves, cast;
  for (const auto& input : inputs) {
    leaves.push_back(input.to(device, dtype).detach().requires_grad_(true));
    cast.push_back(leaves.back() * 1);  // not a leaf: the fused RoPE rotates its input in place
  }
  const torch::Tensor out = f(cast);
  *value = out.detach().cpu();
  (out * upstream.to(out.device(), out.scalar_type())).sum().backward();
  std::vector<torch::Tensor> grads;
  for (const auto& leaf : leaves) grads.push_back(leaf.grad().cpu());
  return grads;
}

// fused(dtype, on `device`) against reference(float64, on the CPU), forward and backward.
inline void check_against_reference(const Op& fused, const Op& reference, const std::vector<torch::Tensor>& inputs,
                                    torch::ScalarType dtype, double rel, const std::string& what,
                                    torch::Device device = torch::kCPU) {
  torch::Tensor fused_value, reference_value;
  const torch::Tensor probe = reference(inputs);
  const torch::Tensor upstream = torch::randn(probe.sizes(), torch::kFloat64);
  const auto fused_grads = gradients(fused, inputs, dtype, device, upstream, &fused_value);
  const auto reference_grads = gradients(reference, inputs, torch::kFloat64, torch::kCPU, upstream, &reference_value);
  expect_close(fused_value, reference_value, rel, what + " forward");
  for (size_t i = 0; i < inputs.size(); ++i) {
    expect_close(fused_grads[i], reference_grads[i], rel, what + " gradient " + std::to_string(i));
  }
}

constexpr double kFp32 = 2e-6, kBf16 = 2e-2;

}  // namespace shardlora::testing
