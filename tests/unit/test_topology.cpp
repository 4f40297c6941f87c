// The topology rank 0 prints at the start of training: gathered over a real (TCP ring)
// communicator from every rank's host and device, and laid out per node.
#include <gtest/gtest.h>

#include "shardlora/cluster/topology.h"
#include "tcp_ranks.h"

using namespace shardlora;
using namespace shardlora::cluster;

namespace {

Topology topology_of(std::vector<RankPlacement> ranks) {
  Topology topology;
  topology.ranks = std::move(ranks);
  topology.launcher = "Slurm";
  topology.backend = "nccl";
  topology.nccl_version = "2.27.3";
  topology.mpi_version = "Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4, May 26, 2022";
  return topology;
}

}  // namespace

TEST(Topology, EveryRanksHostAndDeviceAreGatheredInRankOrder) {
  std::vector<Topology> seen(3);
  shardlora::testing::on_ranks(3, [&](int rank, dist::Communicator& comm) {
    LaunchEnv launch;
    launch.source = LaunchSource::ShardloraLaunch;
    launch.rank = rank;
    launch.world_size = 3;
    // A host name of 300 bytes is cut to the 255 that gethostname allows.
    launch.hostname = rank == 2 ? std::string(300, 'h') : "node-" + std::to_string(rank / 2);
    seen[static_cast<size_t>(rank)] = gather_topology(&comm, launch, torch::kCPU);
  });
  for (const Topology& topology : seen) {
    ASSERT_EQ(topology.ranks.size(), 3u);
    EXPECT_EQ(topology.ranks[0].host, "node-0");
    EXPECT_EQ(topology.ranks[1].host, "node-0");
    EXPECT_EQ(topology.ranks[2].host, std::string(255, 'h'));
    for (const auto& rank : topology.ranks) EXPECT_EQ(rank.device, "cpu (" + std::to_string(at::get_num_threads()) + (at::get_num_threads() == 1 ? " thread)" : " threads)"));
    EXPECT_EQ(topology.backend, "tcp");
    EXPECT_EQ(topology.launcher, "shardlora launch");
    EXPECT_FALSE(topology.mpi_version.empty());
  }
}

TEST(Topology, OneProcessHasNoCommunicatorAndOneLine) {
  LaunchEnv launch;
  launch.hostname = "laptop";
  const Topology topology = gather_topology(nullptr, launch, torch::kCPU);
  ASSERT_EQ(topology.ranks.size(), 1u);
  EXPECT_EQ(topology.backend, "none");
  at::set_num_threads(1);
  const Topology one_thread = gather_topology(nullptr, launch, torch::kCPU);
  EXPECT_EQ(describe_topology(one_thread, "shard"), "topology: 1 rank on laptop, cpu (1 thread), single process\n");
}

TEST(Topology, NodesAreListedWithTheirRanksAndDevices) {
  EXPECT_EQ(describe_topology(topology_of({{"gpu-a", "cuda:0"}, {"gpu-a", "cuda:1"}, {"gpu-bb", "cuda:0"}, {"gpu-bb", "cuda:1"}}), "shard"),
            "topology: 4 ranks on 2 nodes (2 per node, Slurm), backend nccl, strategy shard; NCCL 2.27.3, Open MPI v4.1.4\n"
            "  gpu-a   ranks 0-1: cuda:0, cuda:1\n"
            "  gpu-bb  ranks 2-3: cuda:0, cuda:1\n");
}

TEST(Topology, RoundRobinPlacementAndUnevenNodesAreShownAsTheyAre) {
  Topology topology = topology_of({{"a", "cpu"}, {"b", "cpu"}, {"a", "cpu"}, {"b", "cpu"}, {"a", "cpu"}});
  topology.backend = "mpi";
  topology.nccl_version.clear();
  topology.launcher = "Open MPI";
  EXPECT_EQ(describe_topology(topology, "replicate"),
            "topology: 5 ranks on 2 nodes (2-3 per node, Open MPI), backend mpi, strategy replicate; NCCL not compiled in, Open MPI v4.1.4\n"
            "  a  ranks 0,2,4: cpu\n"
            "  b  ranks 1,3: cpu\n");
}

TEST(Topology, ALargeJobListsTheFirstNodesAndCountsTheRest) {
  std::vector<RankPlacement> ranks;
  for (int node = 0; node < 40; ++node) ranks.push_back({"n" + std::to_string(node), "cuda:0 (CUDA_VISIBLE_DEVICES=0)"});
  const std::string text = describe_topology(topology_of(ranks), "shard");
  EXPECT_NE(text.find("40 ranks on 40 nodes (1 per node, Slurm)"), std::string::npos) << text;
  EXPECT_NE(text.find("  n31  rank 31: cuda:0 (CUDA_VISIBLE_DEVICES=0)\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("n32"), std::string::npos) << text;
  EXPECT_NE(text.find("  ... and 8 more nodes\n"), std::string::npos) << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1 + 32 + 1);
}
