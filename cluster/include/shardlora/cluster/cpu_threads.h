// How many CPU threads a rank computes with (libtorch intra-op and inter-op, and the
// OpenMP loops of the CPU kernels), chosen once at start: training.threads when set, else
// OMP_NUM_THREADS or SLURM_CPUS_PER_TASK when set, else the CPUs this process may use (its
// affinity mask, capped by its cgroup's CPU quota), divided among the node's local ranks
// unless the launcher bound each rank to its own CPUs.
#pragma once

#include <optional>
#include <string>

#include "shardlora/cluster/launch_env.h"

namespace shardlora::cluster {

// What the process may use, as read from the system.
struct CpuBudget {
  int affinity_cpus = 1;              // CPUs in the affinity mask (sched_getaffinity)
  int online_cpus = 1;                // CPUs of the node
  std::optional<double> quota_cpus;   // cgroup CPU quota in CPUs (cpu.max, or cfs quota / period), if limited
};

CpuBudget read_cpu_budget();

struct ThreadChoice {
  int threads = 1;
  std::string reason;  // for the logs, e.g. "auto: 2 CPUs, 1 local rank"
};

// requested: training.threads (0: choose). local_world_size: ranks on this node (0: unknown, 1).
ThreadChoice choose_threads(int requested, const CpuBudget& budget, const EnvLookup& lookup, int local_world_size);

// Sets libtorch's intra-op and inter-op threads and the OpenMP default; the inter-op pool
// keeps its first size once it has started. Remembered for applied_threads().
void apply_threads(const ThreadChoice& choice);
const ThreadChoice& applied_threads();

}  // namespace shardlora::cluster
