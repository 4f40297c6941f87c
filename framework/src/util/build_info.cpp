#include "shardlora/util/build_info.h"

#include <omp.h>
#include <torch/torch.h>

#include <thread>

#include "shardlora/dist/backend_versions.h"
#include "shardlora_git_commit.h"

namespace shardlora {

BuildInfo collect_build_info() {
  BuildInfo info;
  info.version = SHARDLORA_VERSION;
  info.git_commit = SHARDLORA_GIT_COMMIT;
  info.build_type = SHARDLORA_BUILD_TYPE;
  info.torch_version = TORCH_VERSION;
  info.torch_cuda = torch::cuda::is_available();
  info.cuda = kernels::cuda_runtime_info();
  info.nccl_compiled = dist::nccl_compiled();
  info.nccl_version = dist::nccl_version();
  info.mpi_version = dist::mpi_library_version();
  info.torch_threads = at::get_num_threads();
  info.openmp_threads = omp_get_max_threads();
  info.hardware_threads = static_cast<int>(std::thread::hardware_concurrency());
  return info;
}

}  // namespace shardlora
