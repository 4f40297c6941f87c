// Who am I in this job: rank, world size and local rank, read from whatever launched the
// process. Sources are tried in this order, the first complete one wins:
//   OpenMPI mpirun, MPICH/Intel MPI (PMI), `shardlora launch`, Slurm srun, else one process.
// Per-process launcher variables come before Slurm's because a batch script's SLURM_PROCID
// leaks into processes that mpirun starts inside the allocation.
// The local GPU is always the local rank, never rank % gpus_per_node.
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace shardlora::cluster {

enum class LaunchSource { Single, OpenMpi, MpichPmi, ShardloraLaunch, Slurm };

const char* launch_source_name(LaunchSource source);

struct LaunchEnv {
  LaunchSource source = LaunchSource::Single;
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 0;  // 0 when the launcher does not say
  std::string hostname;
};

// Reads one environment variable; std::nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const char* name)>;

EnvLookup process_env();

// Throws shardlora::Error naming the variable when a value is not an integer or is out of
// range (rank >= world size, negative, ...).
LaunchEnv detect_launch_env(const EnvLookup& lookup = process_env());

}  // namespace shardlora::cluster
