// The AdamW step on CUDA. 32-bit state: one thread per element, grid-stride. 8-bit state:
// one thread block per 256-element state block; the new absmax values are block-wide max
// reductions (exact in any order), so codes equal the CPU's.
#include <algorithm>

#include "adamw_impl.h"
#include "common/adamw_update.h"
#include "common/cuda_check.h"
#include "common/map256_cuda.cuh"
#include "common/quantize_value.h"
#include "shardlora/kernels/quant_types.h"

namespace shardlora::kernels {
namespace {

__global__ void adamw_32bit_kernel(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                                   float* __restrict__ v, int64_t numel, const AdamWScalars s) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    float p = param[i], mi = m[i], vi = v[i];
    adamw_update(p, mi, vi, grad[i], s);
    param[i] = p;
    m[i] = mi;
    v[i] = vi;
  }
}

// Max over the block's threads (blockDim.x == kAdamW8bitBlocksize); every thread gets it.
__device__ float block_max(float value, float* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = value;
  __syncthreads();
  float result = scratch[0];
  for (int w = 1; w < kAdamW8bitBlocksize / 32; ++w) result = fmaxf(result, scratch[w]);
  __syncthreads();  // scratch is reused by the next call
  return result;
}

__global__ void adamw_8bit_kernel(float* __restrict__ param, const float* __restrict__ grad, AdamW8bitState state,
                                  int64_t numel, int64_t blocks, const Map256 signed_param, const Map256 unsigned_param,
                                  const AdamWScalars s) {
  __shared__ float signed_map[256], unsigned_map[256], scratch[kAdamW8bitBlocksize / 32];
  stage_map(signed_param, signed_map);
  stage_map(unsigned_param, unsigned_map);
  for (int64_t block = blockIdx.x; block < blocks; block += gridDim.x) {
    const int64_t i = block * kAdamW8bitBlocksize + threadIdx.x;
    const bool live = i < numel;
    float m = 0.0f, v = 0.0f;
    if (live) {
      m = __fmul_rn(signed_map[state.m_codes[i]], state.m_absmax[block]);
      v = __fmul_rn(unsigned_map[state.v_codes[i]], state.v_absmax[block]);
      float p = param[i];
      adamw_update(p, m, v, grad[i], s);
      param[i] = p;
    }
    const float m_absmax = block_max(live ? fabsf(m) : 0.0f, scratch);
    const float v_absmax = block_max(live ? v : 0.0f, scratch);
    if (threadIdx.x == 0) {
      state.m_absmax[block] = m_absmax;
      state.v_absmax[block] = v_absmax;
    }
    if (live) {
      state.m_codes[i] = quantize_8bit_value(signed_map, __fmul_rn(m, reciprocal_scale(m_absmax)));
      state.v_codes[i] = quantize_8bit_value(unsigned_map, __fmul_rn(v, reciprocal_scale(v_absmax)));
    }
  }
}

}  // namespace

void adamw_step_32bit_cuda(float* param, const float* grad, AdamW32bitState state, int64_t numel, const AdamWScalars& s,
                           Stream stream) {
  const auto grid = static_cast<unsigned>(std::min<int64_t>((numel + 255) / 256, 1 << 16));
  adamw_32bit_kernel<<<grid, 256, 0, static_cast<cudaStream_t>(stream)>>>(param, grad, state.m, state.v, numel, s);
  SHARDLORA_CUDA_CHECK_LAUNCH();
}

void adamw_step_8bit_cuda(float* param, const float* grad, AdamW8bitState state, int64_t numel, const AdamWScalars& s,
                          Stream stream) {
  const int64_t blocks = adamw_8bit_blocks(numel);
  const auto grid = static_cast<unsigned>(std::min<int64_t>(blocks, 1 << 16));
  adamw_8bit_kernel<<<grid, kAdamW8bitBlocksize, 0, static_cast<cudaStream_t>(stream)>>>(
      param, grad, state, numel, blocks, map256_of(quant_type_traits(QuantType::DYNAMIC8_SIGNED).code),
      map256_of(quant_type_traits(QuantType::DYNAMIC8_UNSIGNED).code), s);
  SHARDLORA_CUDA_CHECK_LAUNCH();
}

}  // namespace shardlora::kernels
