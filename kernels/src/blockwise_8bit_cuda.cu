// Blockwise 8-bit ops on CUDA. These run over absmax vectors (1/64 of a weight) and
// optimizer state: simple, one warp per block for quantization (absmax by shuffles), one
// thread per element for dequantization, one thread per chunk for the ordered sums.
// __fmul_rn / __fadd_rn keep the product and sum separately rounded, as on the CPU.
#include "blockwise_8bit_impl.h"
#include "common/bits.h"
#include "common/cuda_check.h"
#include "common/map256_cuda.cuh"
#include "common/quantize_value.h"

namespace shardlora::kernels {
namespace {

__global__ void quantize_8bit_kernel(const float* __restrict__ input, float shift, int64_t numel, int64_t blocksize,
                                     int64_t blocks, const Map256 map_param, uint8_t* __restrict__ codes,
                                     float* __restrict__ absmax_out) {
  __shared__ float map[256];
  stage_map(map_param, map);
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t block = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; block < blocks;
       block += warps) {
    const int64_t first = block * blocksize;
    const int64_t count = min(blocksize, numel - first);
    float absmax = 0.0f;
    bool finite = true;
    for (int64_t i = lane; i < count; i += 32) {
      const float value = __fsub_rn(input[first + i], shift);
      finite = finite && isfinite(value);
      absmax = fmaxf(absmax, fabsf(value));
    }
    for (int offset = 16; offset > 0; offset >>= 1) absmax = fmaxf(absmax, __shfl_xor_sync(0xffffffffu, absmax, offset));
    finite = __all_sync(0xffffffffu, finite);
    if (lane == 0) absmax_out[block] = finite ? absmax : __int_as_float(0x7fc00000);
    const float scale = reciprocal_scale(absmax);
    for (int64_t i = lane; i < count; i += 32) {
      codes[first + i] = quantize_8bit_value(map, __fmul_rn(__fsub_rn(input[first + i], shift), scale));
    }
  }
}

__global__ void dequantize_8bit_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ absmax, float offset,
                                       int64_t numel, int log2_blocksize, const Map256 map_param,
                                       float* __restrict__ output) {
  __shared__ float map[256];
  stage_map(map_param, map);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    output[i] = __fadd_rn(__fmul_rn(map[codes[i]], absmax[i >> log2_blocksize]), offset);
  }
}

__global__ void chunk_sums_kernel(const float* __restrict__ values, int64_t count, int64_t chunk, int64_t chunks,
                                  double* __restrict__ sums) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= chunks) return;
  double sum = 0.0;
  for (int64_t i = c * chunk; i < min((c + 1) * chunk, count); ++i) sum = __dadd_rn(sum, values[i]);
  sums[c] = sum;
}

}  // namespace

void quantize_8bit_blockwise_cuda(const float* input, float shift, const Blockwise8bit& shape, uint8_t* codes,
                                  float* absmax, Stream stream) {
  const int64_t blocks = (shape.numel + shape.blocksize - 1) / shape.blocksize;
  const auto grid = static_cast<unsigned>(std::min<int64_t>((blocks + 7) / 8, 1 << 20));
  quantize_8bit_kernel<<<grid, 256, 0, static_cast<cudaStream_t>(stream)>>>(
      input, shift, shape.numel, shape.blocksize, blocks, map256_of(shape.table()), codes, absmax);
  SHARDLORA_CUDA_CHECK_LAUNCH();
}

void dequantize_8bit_blockwise_cuda(const uint8_t* codes, const float* absmax, float offset,
                                    const Blockwise8bit& shape, float* output, Stream stream) {
  const auto grid = static_cast<unsigned>(std::min<int64_t>((shape.numel + 255) / 256, 1 << 20));
  dequantize_8bit_kernel<<<grid, 256, 0, static_cast<cudaStream_t>(stream)>>>(
      codes, absmax, offset, shape.numel, log2_exact(shape.blocksize), map256_of(shape.table()), output);
  SHARDLORA_CUDA_CHECK_LAUNCH();
}

void chunk_sums_f64_cuda(const float* values, int64_t count, int64_t chunk, double* sums, Stream stream) {
  const int64_t chunks = (count + chunk - 1) / chunk;
  const auto grid = static_cast<unsigned>((chunks + 127) / 128);
  chunk_sums_kernel<<<grid, 128, 0, static_cast<cudaStream_t>(stream)>>>(values, count, chunk, chunks, sums);
  SHARDLORA_CUDA_CHECK_LAUNCH();
}

}  // namespace shardlora::kernels
