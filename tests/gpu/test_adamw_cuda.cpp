// AdamW with its parameters on GPU 0, in every placement (state on the GPU; in host memory
// with the update on the CPU; paged through a two-page staging buffer on the copy and
// compute streams), equals the same steps taken on the CPU bit for bit, for 32-bit and 8-bit
// state: the CPU and CUDA kernels both equal the scalar reference bit for bit, and without
// clipping the gradient norm (computed on each device) does not enter the update. Skipped
// without a CUDA device.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "shardlora/optim/adamw.h"

using namespace shardlora::optim;

namespace {

// 10 pages of 1024 and a partial one, and a tensor under min_8bit_size (32-bit state always).
const std::vector<int64_t> kSizes = {10 * 1024 + 777, 300};

std::vector<torch::Tensor> params_on(const torch::Device& device) {
  torch::manual_seed(5);
  std::vector<torch::Tensor> params;
  for (const int64_t size : kSizes) params.push_back(torch::randn({size}).to(device).requires_grad_(true));
  return params;
}

void set_gradients(std::vector<torch::Tensor>& params, int64_t step) {
  torch::manual_seed(100 + step);
  for (auto& p : params) p.mutable_grad() = (torch::randn(p.sizes()) * 1e-2).to(p.device());
}

}  // namespace

TEST(CudaAdamW, EveryPlacementEqualsTheCpuStepsBitForBit) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (or a libtorch without CUDA)";
  const torch::Device gpu(torch::kCUDA, 0);
  for (const int bits : {32, 8}) {
    AdamWOptions options;
    options.lr = 1e-2;
    options.state_bits = bits;
    auto expected = params_on(torch::kCPU);
    AdamW on_cpu(expected, options);
    for (int64_t step = 0; step < 5; ++step) {
      set_gradients(expected, step);
      ASSERT_TRUE(on_cpu.step().applied);
    }
    for (const Placement placement : {Placement::Device, Placement::Cpu, Placement::Paged}) {
      AdamWOptions variant = options;
      variant.placement = placement;
      variant.page_elements = 1024;
      variant.staging_pages = 2;
      auto params = params_on(gpu);
      AdamW adamw(params, variant);
      for (int64_t step = 0; step < 5; ++step) {
        set_gradients(params, step);
        ASSERT_TRUE(adamw.step().applied);
      }
      for (size_t i = 0; i < params.size(); ++i) {
        EXPECT_TRUE(torch::equal(params[i].detach().cpu(), expected[i].detach()))
            << bits << "-bit state, placement " << placement_name(placement) << ", parameter " << i << ": largest difference "
            << (params[i].detach().cpu() - expected[i].detach()).abs().max().item<float>();
      }
      const auto state = adamw.state_dict(), expected_state = on_cpu.state_dict();
      for (const auto& [key, tensor] : expected_state) {
        EXPECT_TRUE(torch::equal(state.at(key), tensor)) << bits << "-bit state, placement " << placement_name(placement) << ": " << key;
      }
    }
  }
}

// A non-finite gradient skips the step in the cpu placement too: the gradients queued for the
// host that step are never used, and the next steps equal the CPU's bit for bit.
TEST(CudaAdamW, CpuPlacementSkipsANonFiniteStepLikeTheCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (or a libtorch without CUDA)";
  AdamWOptions options;
  options.lr = 1e-2;
  const auto run = [&](const torch::Device& device, Placement placement) {
    AdamWOptions variant = options;
    variant.placement = placement;
    auto params = params_on(device);
    AdamW adamw(params, variant);
    for (int64_t step = 0; step < 4; ++step) {
      set_gradients(params, step);
      if (step == 1) params[1].mutable_grad()[7].fill_(std::nan(""));
      EXPECT_EQ(adamw.step().applied, step != 1) << "step " << step << " on " << device;
    }
    for (auto& p : params) p = p.detach().cpu();
    return params;
  };
  const auto expected = run(torch::kCPU, Placement::Cpu), actual = run(torch::Device(torch::kCUDA, 0), Placement::Cpu);
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_TRUE(torch::equal(actual[i], expected[i])) << "parameter " << i;
}
