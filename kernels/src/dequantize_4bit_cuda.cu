// dequantize_4bit on CUDA. The fast kernel has every thread write one 16-byte vector of
// output (8 bf16/f16 or 4 fp32 values) from 4 or 2 code bytes, so a warp reads and writes
// contiguous memory; the 16 code values sit in shared memory (divergent lookups into
// kernel parameters would serialize). A group never straddles a quantization block
// (blocksizes are >= 32), so one absmax load serves it. Misaligned buffers take the
// element-wise kernel.
#include <cstdint>

#include "common/bits.h"
#include "common/cuda_check.h"
#include "common/output_element_cuda.cuh"
#include "common/store_element.h"
#include "dequantize_4bit_impl.h"

namespace shardlora::kernels {
namespace {

constexpr int kThreads = 256;

struct CodeTable {
  float value[16];
};

__device__ __forceinline__ void stage_table(const CodeTable& table, float* shared) {
  if (threadIdx.x < 16) shared[threadIdx.x] = table.value[threadIdx.x];
  __syncthreads();
}

template <DType kOut>
struct Vector16 {
  static constexpr int kElements = 16 / sizeof(typename CudaOutputElement<kOut>::type);
  using Codes = std::conditional_t<kElements == 8, uint32_t, uint16_t>;  // kElements / 2 bytes
};

template <DType kOut>
__global__ void dequantize_4bit_vector_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ absmax,
                                              int64_t numel, int log2_blocksize, CodeTable table,
                                              typename CudaOutputElement<kOut>::type* __restrict__ out) {
  using Element = CudaOutputElement<kOut>;
  using Out = typename Element::type;
  constexpr int kElements = Vector16<kOut>::kElements;
  using Codes = typename Vector16<kOut>::Codes;
  __shared__ float code[16];
  stage_table(table, code);
  const int64_t groups = numel / kElements;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; group < groups; group += stride) {
    const int64_t first = group * kElements;
    const float scale = __ldg(absmax + (first >> log2_blocksize));
    const Codes packed = __ldg(reinterpret_cast<const Codes*>(codes) + group);
    union {
      uint4 vector;
      Out element[kElements];
    } result;
#pragma unroll
    for (int j = 0; j < kElements / 2; ++j) {
      const uint8_t byte = static_cast<uint8_t>(packed >> (8 * j));  // little endian: byte j
      result.element[2 * j] = Element::from_float(code[byte >> 4] * scale);
      result.element[2 * j + 1] = Element::from_float(code[byte & 0x0f] * scale);
    }
    reinterpret_cast<uint4*>(out)[group] = result.vector;
  }
  // The tail (< kElements values) goes to the first threads of block 0.
  const int64_t tail = groups * kElements + (blockIdx.x == 0 ? threadIdx.x : numel);
  if (tail < numel) {
    const uint8_t byte = codes[tail / 2];
    const int q = tail % 2 == 0 ? byte >> 4 : byte & 0x0f;
    out[tail] = Element::from_float(code[q] * __ldg(absmax + (tail >> log2_blocksize)));
  }
}

template <DType kOut>
__global__ void dequantize_4bit_elementwise_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ absmax,
                                                   int64_t numel, int log2_blocksize, CodeTable table,
                                                   typename CudaOutputElement<kOut>::type* __restrict__ out) {
  __shared__ float code[16];
  stage_table(table, code);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const uint8_t byte = codes[i / 2];
    const int q = i % 2 == 0 ? byte >> 4 : byte & 0x0f;
    out[i] = CudaOutputElement<kOut>::from_float(code[q] * __ldg(absmax + (i >> log2_blocksize)));
  }
}

bool aligned(const void* pointer, uintptr_t alignment) {
  return reinterpret_cast<uintptr_t>(pointer) % alignment == 0;
}

unsigned grid_for(int64_t work_items) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((work_items + kThreads - 1) / kThreads, 1 << 20)));
}

}  // namespace

void dequantize_4bit_cuda(const Packed4bit& in, void* out, DType out_dtype, Stream stream) {
  CodeTable table;
  const auto& traits = quant_type_traits(in.type);
  for (int q = 0; q < 16; ++q) table.value[q] = traits.code[q];
  const int log2_blocksize = log2_exact(in.blocksize);
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  dispatch_float_dtype(out_dtype, [&](auto tag) {
    constexpr DType kOut = decltype(tag)::value;
    using Out = typename CudaOutputElement<kOut>::type;
    auto* dst = static_cast<Out*>(out);
    constexpr int kElements = Vector16<kOut>::kElements;
    if (aligned(out, 16) && aligned(in.codes, kElements / 2)) {
      dequantize_4bit_vector_kernel<kOut><<<grid_for(in.numel / kElements), kThreads, 0, cuda_stream>>>(
          in.codes, in.absmax, in.numel, log2_blocksize, table, dst);
    } else {
      dequantize_4bit_elementwise_kernel<kOut><<<grid_for(in.numel), kThreads, 0, cuda_stream>>>(
          in.codes, in.absmax, in.numel, log2_blocksize, table, dst);
    }
  });
  SHARDLORA_CUDA_CHECK_LAUNCH();
}

}  // namespace shardlora::kernels
