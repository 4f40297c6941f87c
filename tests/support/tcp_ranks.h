// Ranks as threads of the test process, joined in one TCP ring communicator over real
// loopback sockets (cluster/tcp_communicator.h): collectives tested without mpirun.
#pragma once

#include <functional>
#include <thread>
#include <vector>

#include "shardlora/cluster/tcp_communicator.h"
#include "shardlora/dist/store.h"

namespace shardlora::testing {

// Runs body(rank, communicator) on `world` threads; failures of any thread are reported by
// gtest (its assertions are thread-safe).
inline void on_ranks(int world, const std::function<void(int, dist::Communicator&)>& body,
                     dist::Milliseconds timeout = std::chrono::seconds(20)) {
  dist::InMemoryStore store;
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      const auto comm = cluster::make_tcp_communicator(store, {rank, world, "job-token", "127.0.0.1", timeout});
      body(rank, *comm);
    });
  }
  for (auto& thread : threads) thread.join();
}

}  // namespace shardlora::testing
