// SHARDLORA_CUDA_CHECK: turns a failed CUDA runtime call into shardlora::Error naming the
// call, the CUDA error and the source line.
#pragma once

#include <cuda_runtime.h>

#include "shardlora/kernels/check.h"

#define SHARDLORA_CUDA_CHECK(call)                                                  \
  do {                                                                              \
    const cudaError_t shardlora_cuda_status = (call);                               \
    SHARDLORA_CHECK(shardlora_cuda_status == cudaSuccess, #call, " failed: ",       \
                    cudaGetErrorName(shardlora_cuda_status), " (",                  \
                    cudaGetErrorString(shardlora_cuda_status), ") at ", __FILE__, ":", \
                    __LINE__);                                                      \
  } while (0)

// Checks the launch of the kernel just queued (bad configuration, missing SASS for the GPU).
#define SHARDLORA_CUDA_CHECK_LAUNCH() SHARDLORA_CUDA_CHECK(cudaGetLastError())
