// The MPI communicator under real mpirun (-np 2 and 3): every collective against a float64
// reference computed from all ranks' inputs (each rank can regenerate any rank's input from
// its seed), byte counters, issue-order completion, and timeouts that fire and recover.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <thread>

#include "shardlora/dist/mpi_communicator.h"

using namespace shardlora;

namespace {

dist::MpiCommunicator& comm() {
  static dist::MpiCommunicator communicator;
  return communicator;
}

// Rank r's input for a test: the same on every rank that asks.
torch::Tensor input_of(int rank, int64_t numel, torch::ScalarType dtype, int salt) {
  torch::Generator generator = at::detail::createCPUGenerator(static_cast<uint64_t>(1000 * salt + rank));
  return torch::randn({numel}, generator, torch::kFloat64).mul(10).to(dtype);
}

}  // namespace

TEST(MpiCollectives, AllReduceSumAndMaxMatchAFloat64Reference) {
  const int world = comm().world_size(), me = comm().rank();
  for (int64_t numel : {1, 7, 4099}) {
    torch::Tensor reference_sum = torch::zeros({numel}, torch::kFloat64), reference_max;
    for (int r = 0; r < world; ++r) {
      const auto x = input_of(r, numel, torch::kFloat32, 1).to(torch::kFloat64);
      reference_sum += x;
      reference_max = r == 0 ? x : torch::maximum(reference_max, x);
    }
    auto sum = input_of(me, numel, torch::kFloat32, 1);
    comm().allreduce(sum, dist::ReduceOp::Sum);
    EXPECT_TRUE(torch::allclose(sum.to(torch::kFloat64), reference_sum, 1e-6, 1e-5)) << "numel " << numel;
    auto max = input_of(me, numel, torch::kFloat32, 1);
    comm().allreduce(max, dist::ReduceOp::Max);
    EXPECT_TRUE(torch::equal(max.to(torch::kFloat64), reference_max)) << "max is exact";
    auto sum64 = input_of(me, numel, torch::kInt64, 2);
    torch::Tensor reference64 = torch::zeros({numel}, torch::kInt64);
    for (int r = 0; r < world; ++r) reference64 += input_of(r, numel, torch::kInt64, 2);
    comm().allreduce(sum64);
    EXPECT_TRUE(torch::equal(sum64, reference64)) << "integer sums are exact";
  }
}

TEST(MpiCollectives, AllGatherConcatenatesInRankOrderBitForBit) {
  const int world = comm().world_size(), me = comm().rank();
  for (auto dtype : {torch::kUInt8, torch::kBFloat16, torch::kFloat32}) {
    const auto mine = input_of(me, 333, dtype, 3);
    auto gathered = torch::empty({333 * world}, mine.options());
    comm().allgather(mine, gathered);
    for (int r = 0; r < world; ++r) {
      EXPECT_TRUE(torch::equal(gathered.slice(0, 333 * r, 333 * (r + 1)), input_of(r, 333, dtype, 3))) << "rank " << r << " " << dtype;
    }
  }
}

TEST(MpiCollectives, ReduceScatterLeavesEachRankItsChunkOfTheSum) {
  const int world = comm().world_size(), me = comm().rank();
  const int64_t chunk = 129;
  torch::Tensor reference = torch::zeros({chunk * world}, torch::kFloat64);
  for (int r = 0; r < world; ++r) reference += input_of(r, chunk * world, torch::kFloat32, 4).to(torch::kFloat64);
  auto output = torch::empty({chunk}, torch::kFloat32);
  comm().reduce_scatter(input_of(me, chunk * world, torch::kFloat32, 4), output);
  EXPECT_TRUE(torch::allclose(output.to(torch::kFloat64), reference.slice(0, chunk * me, chunk * (me + 1)), 1e-6, 1e-5));
}

TEST(MpiCollectives, BroadcastFromEveryRoot) {
  const int world = comm().world_size(), me = comm().rank();
  for (int root = 0; root < world; ++root) {
    auto tensor = input_of(me, 1000, torch::kBFloat16, 5);
    comm().broadcast(tensor, root);
    EXPECT_TRUE(torch::equal(tensor, input_of(root, 1000, torch::kBFloat16, 5))) << "root " << root;
  }
  comm().barrier();
}

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
