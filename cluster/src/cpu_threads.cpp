#include "shardlora/cluster/cpu_threads.h"

#include <omp.h>
#include <sched.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "shardlora/kernels/check.h"

namespace shardlora::cluster {
namespace {

// The quota of the process's cgroup in CPUs: v2's cpu.max ("max 100000" when unlimited),
// else v1's cpu.cfs_quota_us / cpu.cfs_period_us (-1 when unlimited).
std::optional<double> cgroup_quota_cpus() {
  std::ifstream v2("/sys/fs/cgroup/cpu.max");
  std::string quota;
  double period = 0;
  if (v2 >> quota >> period) {
    if (quota == "max" || period <= 0) return std::nullopt;
    return std::stod(quota) / period;
  }
  std::ifstream quota_v1("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), period_v1("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  double quota_us = 0;
  if (quota_v1 >> quota_us && period_v1 >> period && quota_us > 0 && period > 0) return quota_us / period;
  return std::nullopt;
}

std::optional<int> positive_int(const EnvLookup& lookup, const char* name) {
  const auto text = lookup(name);
  if (!text || text->empty()) return std::nullopt;
  // OMP_NUM_THREADS may list one count per nesting level ("4,2"): the first is ours.
  const std::string first = text->substr(0, text->find(','));
  size_t used = 0;
  int value = 0;
  try {
    value = std::stoi(first, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  SHARDLORA_CHECK(used == first.size() && value >= 1, "environment variable ", name, "='", *text,
                  "' is not a positive thread count");
  return value;
}

ThreadChoice g_applied;

}  // namespace

CpuBudget read_cpu_budget() {
  CpuBudget budget;
  cpu_set_t mask;
  CPU_ZERO(&mask);
  budget.online_cpus = std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
  budget.affinity_cpus = sched_getaffinity(0, sizeof mask, &mask) == 0 ? std::max(1, CPU_COUNT(&mask)) : budget.online_cpus;
  budget.quota_cpus = cgroup_quota_cpus();
  return budget;
}

ThreadChoice choose_threads(int requested, const CpuBudget& budget, const EnvLookup& lookup, int local_world_size) {
  SHARDLORA_CHECK(requested >= 0, "training.threads: ", requested, " is negative (0 chooses)");
  if (requested > 0) return {requested, "training.threads"};
  if (const auto omp = positive_int(lookup, "OMP_NUM_THREADS")) return {*omp, "OMP_NUM_THREADS"};
  if (const auto slurm = positive_int(lookup, "SLURM_CPUS_PER_TASK")) return {*slurm, "SLURM_CPUS_PER_TASK"};
  int cpus = budget.affinity_cpus;
  std::string why = std::to_string(cpus) + " CPUs";
  if (budget.quota_cpus && *budget.quota_cpus < cpus) {
    cpus = std::max(1, static_cast<int>(std::ceil(*budget.quota_cpus - 1e-9)));
    why = std::to_string(cpus) + " CPUs of cgroup quota";
  }
  if (budget.affinity_cpus < budget.online_cpus) return {cpus, "auto: " + why + " bound to this rank"};
  const int ranks = std::max(1, local_world_size);
  return {std::max(1, cpus / ranks), "auto: " + why + ", " + std::to_string(ranks) + " local rank" + (ranks > 1 ? "s" : "")};
}

void apply_threads(const ThreadChoice& choice) {
  at::set_num_threads(choice.threads);
  try {
    at::set_num_interop_threads(choice.threads);
  } catch (const c10::Error&) {
    // The inter-op pool has started (a second call): it keeps its size.
  }
  omp_set_num_threads(choice.threads);
  g_applied = choice;
}

const ThreadChoice& applied_threads() { return g_applied; }

}  // namespace shardlora::cluster
