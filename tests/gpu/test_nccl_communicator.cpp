// The NCCL backend on the lent GPU, one rank (NCCL refuses two ranks on one device): every
// collective against the references the CPU backends pass, the stream contract (inputs
// produced on the default stream are read after that work, not before), the byte counters,
// the errors for tensors it cannot take, and a rank that never arrives turning into a
// TimeoutError instead of a hang. Skipped, visibly, without NCCL or a device.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>

#include "collective_checks.h"
#include "shardlora/dist/nccl_communicator.h"
#include "shardlora/kernels/device.h"

using namespace shardlora;

namespace {

const torch::Device kGpu(torch::kCUDA, 0);

class NcclCommunicator : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!dist::nccl_available()) GTEST_SKIP() << "this build has no NCCL";
    const auto info = kernels::cuda_runtime_info();
    if (info.device_count == 0) GTEST_SKIP() << "no CUDA device: " << info.status;
  }

  std::unique_ptr<dist::Communicator> one_rank() {
    return dist::make_nccl_communicator(0, 1, 0, dist::nccl_unique_id(), dist::Milliseconds(60000));
  }
};

TEST_F(NcclCommunicator, EveryCollectiveMatchesTheReference) {
  auto comm = one_rank();
  EXPECT_EQ(comm->backend_name(), "nccl");
  shardlora::testing::check_allreduce_sum_and_max(*comm, kGpu);
  shardlora::testing::check_allgather_bit_exact(*comm, kGpu);
  shardlora::testing::check_reduce_scatter(*comm, kGpu);
  shardlora::testing::check_broadcast_from_every_root(*comm, 1000, kGpu);
  comm->barrier();
}

// The collective runs on the communicator's stream; its input is the result of a chain of
// kernels still queued on the default stream when the collective is issued.
TEST_F(NcclCommunicator, WaitsForTheWorkThatProducedItsInputs) {
  auto comm = one_rank();
  const auto options = torch::TensorOptions(torch::kFloat32).device(kGpu);
  for (int round = 0; round < 5; ++round) {
    auto matrix = torch::full({2048, 2048}, 1.0f / 2048, options);
    auto product = matrix;
    for (int i = 0; i < 20; ++i) product = torch::mm(product, matrix);  // ~0.3 TFLOP queued
    auto input = product.flatten().add(round);
    auto output = torch::full({input.numel()}, -1.0f, options);
    comm->allgather_async(input, output)->wait();
    EXPECT_TRUE(torch::equal(output.cpu(), input.cpu())) << "round " << round;
  }
}

TEST_F(NcclCommunicator, CountsBytesPerCollectiveAsNcclTestsDefinesThem) {
  auto comm = one_rank();
  const auto options = torch::TensorOptions(torch::kBFloat16).device(kGpu);
  comm->allreduce(torch::zeros({100}, options));
  comm->allgather(torch::zeros({10}, options), torch::zeros({10}, options));
  comm->reduce_scatter(torch::zeros({30}, options), torch::zeros({30}, options));
  comm->broadcast(torch::zeros({7}, options), 0);
  const auto& traffic = comm->traffic();
  EXPECT_EQ(traffic.bytes_of(dist::Collective::AllReduce), 200);
  EXPECT_EQ(traffic.bytes_of(dist::Collective::AllGather), 20);
  EXPECT_EQ(traffic.bytes_of(dist::Collective::ReduceScatter), 60);
  EXPECT_EQ(traffic.bytes_of(dist::Collective::Broadcast), 14);
  EXPECT_EQ(traffic.calls_of(dist::Collective::AllReduce), 1);
}

TEST_F(NcclCommunicator, RefusesTensorsItCannotTake) {
  auto comm = one_rank();
  auto expect_error = [&](torch::Tensor tensor, const std::string& fragment) {
    try {
      comm->allreduce(tensor);
      ADD_FAILURE() << "accepted a tensor that should name " << fragment;
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos) << error.what();
    }
  };
  expect_error(torch::zeros({4}), "needs tensors on cuda:0");
  expect_error(torch::zeros({4, 4}, torch::TensorOptions().device(kGpu)).t(), "contiguous");
  expect_error(torch::zeros({4}, torch::TensorOptions(torch::kBool).device(kGpu)), "unsupported dtype");
  comm->allreduce(torch::ones({4}, torch::TensorOptions().device(kGpu)));  // still usable afterwards
}

// Rank 1 of 2 never joins: initialization must end in a TimeoutError after the deadline,
// with the communicator aborted, rather than block the process.
TEST_F(NcclCommunicator, ARankThatNeverArrivesTimesOutInitialization) {
  const auto start = std::chrono::steady_clock::now();
  try {
    dist::make_nccl_communicator(0, 2, 0, dist::nccl_unique_id(), dist::Milliseconds(2000));
    FAIL() << "initialization finished without rank 1";
  } catch (const dist::TimeoutError& error) {
    EXPECT_NE(std::string(error.what()).find("NCCL communicator initialization did not complete within 2 s"),
              std::string::npos)
        << error.what();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(seconds, 2.0);
  EXPECT_LT(seconds, 10.0) << "aborting the half-initialized communicator took too long";
}

}  // namespace
