// The TCP ring communicator with 2-4 ranks as threads of this process over real loopback
// sockets: every collective against a float64 (or exact) reference built from all ranks'
// inputs, issue-order async work and byte counters, a lost peer named, a silent peer timing
// out.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <thread>

#include "collective_checks.h"
#include "shardlora/cluster/tcp_communicator.h"
#include "shardlora/dist/store.h"
#include "tcp_ranks.h"

using namespace shardlora;
using namespace std::chrono_literals;
using shardlora::testing::on_ranks;

namespace {

std::string error_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const std::exception& error) {
    return error.what();
  }
  return "";
}

}  // namespace

TEST(TcpCommunicator, PassesTheChecksEveryBackendPasses) {
  for (int world : {2, 3, 4}) {
    on_ranks(world, [](int, dist::Communicator& comm) {
      shardlora::testing::check_allreduce_sum_and_max(comm);
      shardlora::testing::check_allgather_bit_exact(comm);
      shardlora::testing::check_reduce_scatter(comm);
      shardlora::testing::check_broadcast_from_every_root(comm, (5 << 20) / 2);  // more than one pipelined segment
      comm.barrier();
      const std::string refused = error_of([&] {
        auto halves = torch::ones({4}, torch::kBFloat16);
        comm.allreduce(halves);
      });
      EXPECT_NE(refused.find("not BFloat16"), std::string::npos) << refused;
    });
  }
}

TEST(TcpCommunicator, AsyncWorkCompletesInIssueOrderAndIsCounted) {
  on_ranks(3, [](int me, dist::Communicator& comm) {
    std::vector<torch::Tensor> tensors;
    std::vector<std::unique_ptr<dist::Work>> works;
    for (int i = 0; i < 8; ++i) {
      tensors.push_back(torch::full({4096}, static_cast<double>(me + i), torch::kFloat64));
      works.push_back(comm.allreduce_async(tensors.back(), dist::ReduceOp::Sum));
    }
    for (int i = 0; i < 8; ++i) {
      works[static_cast<size_t>(i)]->wait();
      EXPECT_TRUE(torch::equal(tensors[static_cast<size_t>(i)], torch::full({4096}, 3.0 * i + 3, torch::kFloat64)));
    }
    EXPECT_EQ(comm.traffic().bytes_of(dist::Collective::AllReduce), 8 * 4096 * 8);
    EXPECT_EQ(comm.traffic().calls_of(dist::Collective::AllReduce), 8);
  });
}

TEST(TcpCommunicator, APeerThatExitsIsNamed) {
  on_ranks(3, [](int me, dist::Communicator& comm) {
    comm.barrier();
    if (me == 2) return;  // its sockets close with it
    std::this_thread::sleep_for(200ms);
    const std::string error = error_of([&] {
      auto tensor = torch::ones({1 << 16});
      comm.allreduce(tensor);
    });
    // Rank 0 receives from rank 2; rank 1 sends to it (or waits on rank 0, which failed).
    if (me == 0) EXPECT_NE(error.find("lost rank 2"), std::string::npos) << error;
    EXPECT_FALSE(error.empty());
  });
}

TEST(TcpCommunicator, ASilentPeerTimesOutAndTheRingStaysBroken) {
  on_ranks(
      2,
      [](int me, dist::Communicator& comm) {
        if (me == 1) {
          std::this_thread::sleep_for(1500ms);  // misses the collective the other rank waits in
          return;
        }
        const auto started = std::chrono::steady_clock::now();
        const std::string error = error_of([&] {
          auto tensor = torch::ones({16});
          comm.allreduce(tensor);
        });
        EXPECT_NE(error.find("rank 1 sent nothing"), std::string::npos) << error;
        EXPECT_LT(std::chrono::steady_clock::now() - started, 1400ms);
        const std::string later = error_of([&] { comm.barrier(); });
        EXPECT_NE(later.find("failed earlier"), std::string::npos) << later;
      },
      300ms);
}
