#include "shardlora/cluster/launch_env.h"

#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>

#include "shardlora/cluster/env_vars.h"
#include "shardlora/kernels/check.h"

namespace shardlora::cluster {
namespace {

// The variables one launcher sets. local_* may be null when the launcher has none.
struct SourceVars {
  LaunchSource source;
  const char* rank;
  const char* world_size;
  const char* local_rank;
  const char* local_world_size;
};

// Slurm's world size is the step's task count inside srun, else the job's SLURM_NTASKS.
constexpr SourceVars kSources[] = {
    {LaunchSource::OpenMpi, env::kOmpiRank, env::kOmpiSize, env::kOmpiLocalRank, env::kOmpiLocalSize},
    {LaunchSource::MpichPmi, env::kPmiRank, env::kPmiSize, env::kMpichLocalRank, env::kMpichLocalSize},
    {LaunchSource::ShardloraLaunch, env::kLaunchRank, env::kLaunchWorldSize, env::kLaunchLocalRank,
     env::kLaunchLocalWorldSize},
    {LaunchSource::Slurm, env::kSlurmProcId, env::kSlurmStepNumTasks, env::kSlurmLocalId,
     env::kSlurmNtasksPerNode},
};

int parse_int(const char* name, const std::string& text) {
  errno = 0;
  char* end = nullptr;
  const long value = std::strtol(text.c_str(), &end, 10);
  SHARDLORA_CHECK(!text.empty() && end && *end == '\0' && errno == 0 && value >= 0 && value <= INT_MAX,
                  "environment variable ", name, "='", text, "' is not a non-negative integer");
  return static_cast<int>(value);
}

std::optional<int> read_int(const EnvLookup& lookup, const char* name) {
  if (!name) return std::nullopt;
  const auto text = lookup(name);
  if (!text) return std::nullopt;
  return parse_int(name, *text);
}

std::string local_hostname() {
  char name[HOST_NAME_MAX + 1] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "unknown";
  return name;
}

}  // namespace

const char* launch_source_name(LaunchSource source) {
  switch (source) {
    case LaunchSource::Single: return "single process";
    case LaunchSource::OpenMpi: return "Open MPI";
    case LaunchSource::MpichPmi: return "MPICH/PMI";
    case LaunchSource::ShardloraLaunch: return "shardlora launch";
    case LaunchSource::Slurm: return "Slurm";
  }
  return "unknown";
}

EnvLookup process_env() {
  return [](const char* name) -> std::optional<std::string> {
    const char* value = std::getenv(name);
    if (!value) return std::nullopt;
    return std::string(value);
  };
}

LaunchEnv detect_launch_env(const EnvLookup& lookup) {
  LaunchEnv launch;
  launch.hostname = local_hostname();
  for (const SourceVars& vars : kSources) {
    const auto rank = read_int(lookup, vars.rank);
    if (!rank) continue;
    auto world_size = read_int(lookup, vars.world_size);
    const char* world_name = vars.world_size;
    if (!world_size && vars.source == LaunchSource::Slurm) {
      world_size = read_int(lookup, env::kSlurmNtasks);
      world_name = env::kSlurmNtasks;
    }
    SHARDLORA_CHECK(world_size, vars.rank, " is set but ", vars.world_size,
                    " is not: cannot tell the world size (", launch_source_name(vars.source), ")");
    SHARDLORA_CHECK(*world_size >= 1 && *rank < *world_size, vars.rank, "=", *rank,
                    " is not a rank of a job of ", world_name, "=", *world_size, " processes");
    launch.source = vars.source;
    launch.rank = *rank;
    launch.world_size = *world_size;
    launch.local_rank = read_int(lookup, vars.local_rank).value_or(0);
    launch.local_world_size = read_int(lookup, vars.local_world_size).value_or(0);
    if (launch.local_world_size > 0) {
      SHARDLORA_CHECK(launch.local_rank < launch.local_world_size, vars.local_rank, "=",
                      launch.local_rank, " is not below ", vars.local_world_size, "=",
                      launch.local_world_size);
    }
    return launch;
  }
  return launch;
}

}  // namespace shardlora::cluster
