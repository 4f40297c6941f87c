// The MPI communicator under real mpirun (-np 2 and 3): every collective against a float64
// reference computed from all ranks' inputs (each rank can regenerate any rank's input from
// its seed), byte counters, issue-order completion, and timeouts that fire and recover.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <thread>

#include "collective_checks.h"
#include "shardlora/dist/mpi_communicator.h"

using namespace shardlora;
using shardlora::testing::input_of;

namespace {

dist::MpiCommunicator& comm() {
  static dist::MpiCommunicator communicator;
  return communicator;
}


}  // namespace

TEST(MpiCollectives, AllReduceSumAndMaxMatchAFloat64Reference) { shardlora::testing::check_allreduce_sum_and_max(comm()); }

TEST(MpiCollectives, AllGatherConcatenatesInRankOrderBitForBit) { shardlora::testing::check_allgather_bit_exact(comm()); }

TEST(MpiCollectives, ReduceScatterLeavesEachRankItsChunkOfTheSum) { shardlora::testing::check_reduce_scatter(comm()); }

TEST(MpiCollectives, BroadcastFromEveryRoot) { shardlora::testing::check_broadcast_from_every_root(comm()); }

TEST(MpiCollectives, AsyncWorksOverlapAndCompleteInIssueOrder) {
  const int world = comm().world_size();
  std::vector<torch::Tensor> buckets;
  std::vector<std::unique_ptr<dist::Work>> works;
  for (int b = 0; b < 8; ++b) {
    buckets.push_back(torch::full({1000 + b}, static_cast<float>(b + 1)));
    works.push_back(comm().allreduce_async(buckets.back(), dist::ReduceOp::Sum));
  }
  for (int b = 0; b < 8; ++b) {
    works[static_cast<size_t>(b)]->wait();
    EXPECT_TRUE(torch::all(buckets[static_cast<size_t>(b)] == static_cast<float>((b + 1) * world)).item<bool>());
  }
}

TEST(MpiCollectives, ByteCountersCountMessageSizes) {
  const int world = comm().world_size();
  const dist::Traffic before = comm().traffic();
  comm().allreduce(torch::zeros({100}, torch::kFloat32));
  comm().allgather(torch::zeros({10}, torch::kUInt8), torch::zeros({10 * world}, torch::kUInt8));
  comm().reduce_scatter(torch::zeros({4 * world}, torch::kFloat64), torch::zeros({4}, torch::kFloat64));
  comm().broadcast(torch::zeros({3}, torch::kInt64), 0);
  const dist::Traffic& after = comm().traffic();
  EXPECT_EQ(after.bytes_of(dist::Collective::AllReduce) - before.bytes_of(dist::Collective::AllReduce), 400);
  EXPECT_EQ(after.bytes_of(dist::Collective::AllGather) - before.bytes_of(dist::Collective::AllGather), 10 * world);
  EXPECT_EQ(after.bytes_of(dist::Collective::ReduceScatter) - before.bytes_of(dist::Collective::ReduceScatter), 32 * world);
  EXPECT_EQ(after.bytes_of(dist::Collective::Broadcast) - before.bytes_of(dist::Collective::Broadcast), 24);
  EXPECT_EQ(after.calls_of(dist::Collective::AllReduce) - before.calls_of(dist::Collective::AllReduce), 1);
}

TEST(MpiCollectives, ALateRankTripsTheTimeoutThenTheCollectiveStillCompletes) {
  const int world = comm().world_size(), me = comm().rank();
  const auto saved = comm().timeout();
  comm().set_timeout(std::chrono::milliseconds(300));
  auto tensor = torch::ones({16});
  if (me == world - 1) std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  auto work = comm().allreduce_async(tensor, dist::ReduceOp::Sum);
  if (me != world - 1) {
    const auto start = std::chrono::steady_clock::now();
    try {
      work->wait();
      ADD_FAILURE() << "rank " << me << ": the late rank should have tripped the timeout";
    } catch (const dist::TimeoutError& error) {
      EXPECT_NE(std::string(error.what()).find("allreduce #"), std::string::npos) << error.what();
      EXPECT_NE(std::string(error.what()).find("0.3 s"), std::string::npos) << error.what();
      EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1200));
    }
  }
  comm().set_timeout(saved);
  work->wait();  // the request is still live: it completes once the late rank arrives
  EXPECT_TRUE(torch::all(tensor == static_cast<float>(world)).item<bool>());
}

TEST(MpiCollectives, RefusesWhatMpiCannotReduceOrWrongSizes) {
  auto bf16 = torch::ones({4}, torch::kBFloat16);
  try {
    comm().allreduce(bf16);
    ADD_FAILURE() << "bf16 reduction accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("BFloat16"), std::string::npos) << error.what();
  }
  EXPECT_THROW(comm().allgather(torch::zeros({4}), torch::zeros({3})), Error);
  EXPECT_THROW(comm().broadcast(torch::zeros({4}), comm().world_size()), Error);
}
