// gemv_4bit on CUDA: one warp per output row (4 rows per 128-thread block, as bitsandbytes'
// kgemm_4bit_inference_naive). Each lane takes 32 consecutive weights at a time (16 code
// bytes and 32 activations, with 16-byte loads when aligned; one quantization block since
// blocksizes are >= 32), dequantizes them through a 16-entry table in shared memory and
// accumulates in fp32; a shuffle reduction ends the row.
#include "common/bits.h"
#include "common/cuda_check.h"
#include "common/load_element.h"
#include "common/output_element_cuda.cuh"
#include "gemv_4bit_impl.h"

namespace shardlora::kernels {
namespace {

constexpr int kRowsPerBlock = 4;

struct CodeTable {
  float value[16];
};

// Loads n bytes starting at `src` into `dst`: one or more 16-byte loads when kVector
// (the caller checked alignment), byte loads otherwise.
template <bool kVector, int kBytes>
__device__ __forceinline__ void load_bytes(const void* __restrict__ src, void* dst) {
  static_assert(kBytes % 16 == 0, "whole vectors");
  if constexpr (kVector) {
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) reinterpret_cast<uint4*>(dst)[i] = __ldg(reinterpret_cast<const uint4*>(src) + i);
  } else {
#pragma unroll
    for (int i = 0; i < kBytes; ++i) static_cast<uint8_t*>(dst)[i] = __ldg(static_cast<const uint8_t*>(src) + i);
  }
}

template <DType kX, DType kY, bool kVector>
__global__ void gemv_4bit_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ absmax,
                                 int64_t rows, int64_t cols, int log2_blocksize, CodeTable table,
                                 const typename InputElement<kX>::type* __restrict__ x,
                                 typename CudaOutputElement<kY>::type* __restrict__ y) {
  using XElement = typename InputElement<kX>::type;
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = table.value[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int64_t row_start = row * cols;
  float sum = 0.0f;
  for (int64_t c = static_cast<int64_t>(lane) * 32; c < cols; c += 32 * 32) {
    const float scale = __ldg(absmax + ((row_start + c) >> log2_blocksize));
    uint8_t bytes[16];
    XElement xs[32];
    load_bytes<kVector, 16>(codes + (row_start + c) / 2, bytes);
    load_bytes<kVector, sizeof xs>(x + c, xs);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      sum = fmaf(code[bytes[j] >> 4] * scale, InputElement<kX>::to_float(xs[2 * j]), sum);
      sum = fmaf(code[bytes[j] & 0x0f] * scale, InputElement<kX>::to_float(xs[2 * j + 1]), sum);
    }
  }
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) y[row] = CudaOutputElement<kY>::from_float(sum);
}

bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

}  // namespace

void gemv_4bit_cuda(const Packed4bit& weight, Gemv4bitShape shape, const void* x, DType x_dtype, void* y,
                    DType y_dtype, Stream stream) {
  CodeTable table;
  const float* code = quant_type_traits(weight.type).code;
  for (int q = 0; q < 16; ++q) table.value[q] = code[q];
  const auto grid = static_cast<unsigned>((shape.rows + kRowsPerBlock - 1) / kRowsPerBlock);
  dispatch_float_dtype(x_dtype, [&](auto x_tag) {
    constexpr DType kX = decltype(x_tag)::value;
    dispatch_float_dtype(y_dtype, [&](auto y_tag) {
      constexpr DType kY = decltype(y_tag)::value;
      auto launch = [&](auto kernel) {
        kernel<<<grid, kRowsPerBlock * 32, 0, static_cast<cudaStream_t>(stream)>>>(
            weight.codes, weight.absmax, shape.rows, shape.cols, log2_exact(weight.blocksize), table,
            static_cast<const typename InputElement<kX>::type*>(x), static_cast<typename CudaOutputElement<kY>::type*>(y));
      };
      // Rows start on 16-byte boundaries (cols is a multiple of 32), so base alignment suffices.
      if (aligned16(weight.codes) && aligned16(x)) {
        launch(gemv_4bit_kernel<kX, kY, true>);
      } else {
        launch(gemv_4bit_kernel<kX, kY, false>);
      }
    });
  });
  SHARDLORA_CUDA_CHECK_LAUNCH();
}

}  // namespace shardlora::kernels
