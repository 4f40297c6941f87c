// What this binary was built with and what it can see at run time: the facts behind
// `shardlora env` and the header of every run log.
#pragma once

#include <string>

#include "shardlora/kernels/device.h"

namespace shardlora {

struct BuildInfo {
  std::string version;         // project version, e.g. "0.1.0"
  std::string git_commit;      // short commit, "+dirty" when built from a modified tree
  std::string build_type;      // CMake build type
  std::string torch_version;   // libtorch the binary was compiled against
  bool torch_cuda = false;     // libtorch itself can use CUDA devices
  kernels::CudaRuntimeInfo cuda;
  bool nccl_compiled = false;
  std::string nccl_version;    // e.g. "2.27.3"; empty when not compiled
  std::string mpi_version;     // MPI_Get_library_version, first line
  int torch_threads = 0;       // intra-op threads libtorch will use
  int openmp_threads = 0;      // threads the CPU kernels' parallel loops will use
  int hardware_threads = 0;    // std::thread::hardware_concurrency
};

BuildInfo collect_build_info();

}  // namespace shardlora
