// The trainer with its model on GPU 0: the same run as on the CPU (LoRA dropout off, so the
// two devices' random streams do not matter) within fp32 tolerance, and a run stopped at a
// checkpoint resumes on the GPU to the uninterrupted run's losses, dropout on (the CUDA
// generator's state is in the checkpoint). Skipped without a CUDA device.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <cmath>

#include "shardlora/io/tensor_file.h"
#include "shardlora/train/trainer.h"
#include "tiny_training_run.h"

using namespace shardlora;
using namespace shardlora::train;

namespace {

class CudaTraining : public shardlora::testing::TinyTrainingRun {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (or a libtorch without CUDA)";
    TinyTrainingRun::SetUp();
  }
  const torch::Device gpu{torch::kCUDA, 0};
};

}  // namespace

TEST_F(CudaTraining, TakesTheStepsOfTheCpuRun) {
  const std::vector<std::string> no_dropout = {"lora.dropout=0"};
  Trainer(recipe("cpu", no_dropout), nullptr, torch::kCPU).run(StartMode::Fresh);
  Trainer on_gpu(recipe("gpu", no_dropout), nullptr, gpu);
  EXPECT_TRUE(on_gpu.model()->parameters().front().is_cuda());
  on_gpu.run(StartMode::Fresh);
  const auto expected = losses("cpu"), got = losses("gpu");
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], 1e-3 * std::abs(expected[i])) << "step " << i + 1;
  const auto a = io::read_tensor_file(path("cpu/adapter/adapter_model.safetensors"));
  const auto b = io::read_tensor_file(path("gpu/adapter/adapter_model.safetensors"));
  ASSERT_EQ(a.size(), b.size());
  // AdamW moves every element by about lr (1e-2) a step whatever its gradient's size, so an
  // element whose gradient is near zero turns a rounding-level difference into a visible one
  // (6.5e-4 seen on an H100). A tenth of one step bounds that; a wrong gradient or a missed
  // update moves elements by whole steps.
  for (const auto& [key, tensor] : a) {
    EXPECT_TRUE(torch::allclose(b.at(key), tensor, 1e-3, 1e-3))
        << key << ": largest difference " << (b.at(key) - tensor).abs().max().item<float>() << " of values up to "
        << tensor.abs().max().item<float>();
  }
}

TEST_F(CudaTraining, AStoppedRunResumesToTheUninterruptedLosses) {
  Trainer(recipe("straight"), nullptr, gpu).run(StartMode::Fresh);
  Trainer(recipe("resumed"), nullptr, gpu).run(StartMode::Fresh, {.stop = [](int64_t step) { return step == 3; }});
  EXPECT_EQ(io::read_tensor_file(path("resumed/checkpoint-000003/rng.safetensors")).count("cuda"), 1u);
  Trainer(recipe("resumed"), nullptr, gpu).run(StartMode::Resume);
  const auto expected = losses("straight"), got = losses("resumed");
  ASSERT_EQ(got.size(), 6u);
  ASSERT_EQ(expected.size(), 6u);
  // The same kernels on the same data: equal up to the order of atomics in a few reductions.
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], 1e-6 * std::abs(expected[i])) << "step " << i + 1;
}
