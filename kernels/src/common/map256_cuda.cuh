// A 256-entry 8-bit map passed to CUDA kernels by value (1 KiB of kernel parameters) and
// staged in shared memory by the block.
#pragma once

namespace shardlora::kernels {

struct Map256 {
  float value[256];
};

inline Map256 map256_of(const float* code) {
  Map256 map;
  for (int i = 0; i < 256; ++i) map.value[i] = code[i];
  return map;
}

__device__ inline void stage_map(const Map256& map, float* shared) {
  for (int i = threadIdx.x; i < 256; i += blockDim.x) shared[i] = map.value[i];
  __syncthreads();
}

}  // namespace shardlora::kernels
