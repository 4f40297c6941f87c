// Where a job's ranks run: rank 0 prints it when training starts, so a user sees at once
// whether the launcher placed ranks and GPUs as meant (two ranks on one GPU, a node short
// of tasks, the wrong backend) before any time is spent loading.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "shardlora/cluster/launch_env.h"
#include "shardlora/dist/communicator.h"

namespace shardlora::cluster {

struct RankPlacement {
  std::string host;
  std::string device;  // "cpu", "cuda:0", ...
};

struct Topology {
  std::vector<RankPlacement> ranks;  // in rank order
  std::string launcher;              // launch_source_name
  std::string backend;               // the communicator's, "none" on one rank
  std::string nccl_version;          // empty when NCCL is not compiled in
  std::string mpi_version;
};

// Collective: every rank of the job calls it (comm is null on one rank). The host names and
// devices travel through `device` (NCCL moves only GPU tensors).
Topology gather_topology(dist::Communicator* comm, const LaunchEnv& launch, torch::Device device);

// For the log, e.g.
//   topology: 4 ranks on 2 nodes (2 per node, Slurm), backend nccl, strategy shard; NCCL 2.27.3, Open MPI v4.1.4
//     gpu-a  ranks 0-1  cuda:0 cuda:1
//     gpu-b  ranks 2-3  cuda:0 cuda:1
// Nodes in order of their first rank; a node whose ranks are not consecutive lists them.
std::string describe_topology(const Topology& topology, const std::string& strategy);

}  // namespace shardlora::cluster
