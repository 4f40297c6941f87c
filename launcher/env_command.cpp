// `shardlora env`: the build, the devices and communication libraries this process can
// see, and its place in the job. Under mpirun each rank prints its own line(s).
#include <nlohmann/json.hpp>

#include <iostream>
#include <memory>

#include "commands.h"
#include "shardlora/cluster/cpu_threads.h"
#include "shardlora/cluster/launch_env.h"
#include "shardlora/util/build_info.h"

namespace shardlora::launcher {
namespace {

nlohmann::json to_json(const BuildInfo& build, const cluster::LaunchEnv& launch) {
  nlohmann::json devices = nlohmann::json::array();
  for (int index = 0; index < build.cuda.device_count; ++index) {
    devices.push_back(kernels::cuda_device_description(index));
  }
  return {
      {"version", build.version},
      {"git_commit", build.git_commit},
      {"build_type", build.build_type},
      {"torch", {{"version", build.torch_version}, {"cuda", build.torch_cuda}}},
      {"cuda",
       {{"compiled", build.cuda.compiled},
        {"runtime_version", build.cuda.runtime_version},
        {"driver_version", build.cuda.driver_version},
        {"architectures", build.cuda.architectures},
        {"device_count", build.cuda.device_count},
        {"devices", devices},
        {"status", build.cuda.status}}},
      {"nccl", {{"compiled", build.nccl_compiled}, {"version", build.nccl_version}}},
      {"mpi", {{"library", build.mpi_version}}},
      {"threads",
       {{"torch", build.torch_threads}, {"openmp", build.openmp_threads}, {"hardware", build.hardware_threads},
        {"chosen_by", cluster::applied_threads().reason}}},
      {"launch",
       {{"source", cluster::launch_source_name(launch.source)},
        {"rank", launch.rank},
        {"world_size", launch.world_size},
        {"local_rank", launch.local_rank},
        {"local_world_size", launch.local_world_size},
        {"hostname", launch.hostname}}},
  };
}

std::string cuda_version_text(int version) {
  return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

void print_text(const BuildInfo& build, const cluster::LaunchEnv& launch) {
  std::ostringstream out;
  const std::string prefix = launch.world_size > 1 ? "[rank " + std::to_string(launch.rank) + "] " : "";
  out << prefix << "shardlora " << build.version << " (git " << build.git_commit << ", "
      << build.build_type << ")\n";
  out << prefix << "libtorch   " << build.torch_version << (build.torch_cuda ? " (CUDA)" : " (CPU)") << "\n";
  out << prefix << "CUDA       ";
  if (!build.cuda.compiled) {
    out << "not compiled in\n";
  } else {
    out << "compiled in (runtime " << cuda_version_text(build.cuda.runtime_version) << ", sm "
        << build.cuda.architectures << "), driver "
        << (build.cuda.driver_version ? cuda_version_text(build.cuda.driver_version) : "none")
        << ", devices visible: " << build.cuda.device_count;
    if (!build.cuda.status.empty()) out << " (" << build.cuda.status << ")";
    out << "\n";
    for (int index = 0; index < build.cuda.device_count; ++index) {
      out << prefix << "  cuda:" << index << "   " << kernels::cuda_device_description(index) << "\n";
    }
  }
  out << prefix << "NCCL       "
      << (build.nccl_compiled ? "compiled in (" + build.nccl_version + ")" : std::string("not compiled in"))
      << "\n";
  out << prefix << "MPI        " << build.mpi_version << "\n";
  out << prefix << "threads    " << build.torch_threads << " libtorch intra-op, " << build.openmp_threads
      << " OpenMP (CPU kernels), " << build.hardware_threads << " hardware (" << cluster::applied_threads().reason << ")\n";
  out << prefix << "launch     rank " << launch.rank << " of " << launch.world_size << ", local rank "
      << launch.local_rank;
  if (launch.local_world_size > 0) out << " of " << launch.local_world_size;
  out << " on " << launch.hostname << " (" << cluster::launch_source_name(launch.source) << ")\n";
  std::cout << out.str() << std::flush;  // one write, so mpirun does not interleave ranks mid-line
}

}  // namespace

Subcommand add_env_command(CLI::App& root) {
  CLI::App* app = root.add_subcommand("env", "Print the build, devices, MPI/NCCL and this rank's place in the job");
  auto as_json = std::make_shared<bool>(false);
  app->add_flag("--json", *as_json, "One JSON object on one line, for scripts");
  return {app, [as_json] {
            const BuildInfo build = collect_build_info();
            const cluster::LaunchEnv launch = cluster::detect_launch_env();
            if (*as_json) {
              std::cout << to_json(build, launch).dump() + "\n" << std::flush;
            } else {
              print_text(build, launch);
            }
            return 0;
          }};
}

}  // namespace shardlora::launcher
