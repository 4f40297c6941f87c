// How many threads a rank takes: the recipe's training.threads, then OMP_NUM_THREADS, then
// SLURM_CPUS_PER_TASK, then its CPUs (affinity mask, cgroup quota) divided among the node's
// local ranks unless the launcher bound it to its own; and applying the choice.
#include <gtest/gtest.h>
#include <omp.h>
#include <torch/torch.h>

#include <map>

#include "shardlora/cluster/cpu_threads.h"
#include "shardlora/kernels/check.h"

using namespace shardlora;
using namespace shardlora::cluster;

namespace {

EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars](const char* name) -> std::optional<std::string> {
    const auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

const CpuBudget kEightCpus{8, 8, std::nullopt};

TEST(CpuThreads, TheRecipeWinsThenOmpThenSlurm) {
  const EnvLookup both = env_of({{"OMP_NUM_THREADS", "3"}, {"SLURM_CPUS_PER_TASK", "5"}});
  EXPECT_EQ(choose_threads(2, kEightCpus, both, 1).threads, 2);
  EXPECT_EQ(choose_threads(0, kEightCpus, both, 1).threads, 3);
  EXPECT_EQ(choose_threads(0, kEightCpus, both, 1).reason, "OMP_NUM_THREADS");
  EXPECT_EQ(choose_threads(0, kEightCpus, env_of({{"OMP_NUM_THREADS", "4,2"}}), 1).threads, 4) << "the outer level of a list";
  EXPECT_EQ(choose_threads(0, kEightCpus, env_of({{"SLURM_CPUS_PER_TASK", "5"}}), 4).threads, 5);
}

TEST(CpuThreads, TheNodesCpusAreSharedAmongItsLocalRanks) {
  const EnvLookup none = env_of({});
  EXPECT_EQ(choose_threads(0, kEightCpus, none, 1).threads, 8);
  EXPECT_EQ(choose_threads(0, kEightCpus, none, 0).threads, 8) << "unknown local size: one rank";
  EXPECT_EQ(choose_threads(0, kEightCpus, none, 2).threads, 4);
  EXPECT_EQ(choose_threads(0, kEightCpus, none, 3).threads, 2);
  EXPECT_EQ(choose_threads(0, kEightCpus, none, 16).threads, 1) << "never zero";
  EXPECT_EQ(choose_threads(0, {2, 2, std::nullopt}, none, 2).reason, "auto: 2 CPUs, 2 local ranks");
}

TEST(CpuThreads, ABoundRankUsesItsMaskAndAQuotaCaps) {
  const EnvLookup none = env_of({});
  // mpirun --bind-to core / srun --cpu-bind: 2 of the node's 8 CPUs are this rank's alone.
  EXPECT_EQ(choose_threads(0, {2, 8, std::nullopt}, none, 4).threads, 2);
  // A container limited to 2.5 CPUs of 8: 3 threads, shared by 1 rank.
  EXPECT_EQ(choose_threads(0, {8, 8, 2.5}, none, 1).threads, 3);
  EXPECT_EQ(choose_threads(0, {8, 8, 4.0}, none, 2).threads, 2);
}

TEST(CpuThreads, BadCountsAreNamed) {
  try {
    choose_threads(0, kEightCpus, env_of({{"OMP_NUM_THREADS", "many"}}), 1);
    FAIL() << "accepted OMP_NUM_THREADS=many";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("OMP_NUM_THREADS='many'"), std::string::npos) << error.what();
  }
  EXPECT_THROW(choose_threads(0, kEightCpus, env_of({{"SLURM_CPUS_PER_TASK", "0"}}), 1), Error);
  EXPECT_THROW(choose_threads(-1, kEightCpus, env_of({}), 1), Error);
}

TEST(CpuThreads, ApplyingSetsLibtorchAndOpenMp) {
  const CpuBudget budget = read_cpu_budget();
  EXPECT_GE(budget.affinity_cpus, 1);
  EXPECT_LE(budget.affinity_cpus, budget.online_cpus);
  apply_threads({1, "test"});
  EXPECT_EQ(at::get_num_threads(), 1);
  EXPECT_EQ(omp_get_max_threads(), 1);
  apply_threads({2, "test again"});  // a second call: the inter-op pool keeps its size, no error
  EXPECT_EQ(at::get_num_threads(), 2);
  EXPECT_EQ(omp_get_max_threads(), 2);
  EXPECT_EQ(applied_threads().reason, "test again");
}

}  // namespace
