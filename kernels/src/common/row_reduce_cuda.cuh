// Block-wide fp32 sum and max for the fused kernels that give one thread block per row.
#pragma once

#include <cuda_runtime.h>

namespace shardlora::kernels {

constexpr int kRowThreads = 256;

// Every thread of the block gets the total; `scratch` holds kRowThreads / 32 floats.
template <typename Combine>
__device__ __forceinline__ float block_reduce(float value, float* scratch, Combine combine) {
  for (int offset = 16; offset > 0; offset >>= 1) value = combine(value, __shfl_xor_sync(0xffffffffu, value, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  value = scratch[0];
  for (int w = 1; w < kRowThreads / 32; ++w) value = combine(value, scratch[w]);
  return value;
}

__device__ __forceinline__ float block_sum(float value, float* scratch) {
  return block_reduce(value, scratch, [](float a, float b) { return a + b; });
}

__device__ __forceinline__ float block_max(float value, float* scratch) {
  return block_reduce(value, scratch, [](float a, float b) { return fmaxf(a, b); });
}

}  // namespace shardlora::kernels
