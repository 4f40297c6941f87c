// dequantize_4bit on CUDA: each thread expands 4 packed bytes into 8 outputs. A group of
// 8 elements never straddles a quantization block (blocksizes are >= 32), so one absmax
// load serves the whole group.
#include "common/cuda_check.h"
#include "common/output_element_cuda.cuh"
#include "common/store_element.h"
#include "dequantize_4bit_impl.h"

namespace shardlora::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kElementsPerThread = 8;

struct CodeTable {
  float value[16];
};

template <DType kOut>
__global__ void dequantize_4bit_kernel(const uint8_t* __restrict__ codes,
                                       const float* __restrict__ absmax, int64_t numel,
                                       int log2_blocksize, CodeTable table,
                                       typename CudaOutputElement<kOut>::type* __restrict__ out) {
  using Element = CudaOutputElement<kOut>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * kElementsPerThread;
  for (int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kElementsPerThread;
       first < numel; first += stride) {
    const float scale = __ldg(absmax + (first >> log2_blocksize));
    const uint8_t* src = codes + first / 2;
    if (first + kElementsPerThread <= numel) {
#pragma unroll
      for (int j = 0; j < kElementsPerThread / 2; ++j) {
        const uint8_t byte = __ldg(src + j);
        out[first + 2 * j] = Element::from_float(table.value[byte >> 4] * scale);
        out[first + 2 * j + 1] = Element::from_float(table.value[byte & 0x0f] * scale);
      }
    } else {
      for (int64_t i = first; i < numel; ++i) {
        const uint8_t byte = __ldg(src + (i - first) / 2);
        const int q = ((i - first) % 2 == 0) ? (byte >> 4) : (byte & 0x0f);
        out[i] = Element::from_float(table.value[q] * scale);
      }
    }
  }
}

int log2_exact(int64_t power_of_two) {
  int log2 = 0;
  while ((int64_t{1} << log2) < power_of_two) ++log2;
  return log2;
}

}  // namespace

void dequantize_4bit_cuda(const Packed4bit& in, void* out, DType out_dtype, Stream stream) {
  CodeTable table;
  const auto& traits = quant_type_traits(in.type);
  for (int q = 0; q < 16; ++q) table.value[q] = traits.code[q];
  const int64_t groups = (in.numel + kElementsPerThread - 1) / kElementsPerThread;
  const auto grid = static_cast<unsigned>(std::min<int64_t>((groups + kThreads - 1) / kThreads, 1 << 30));
  dispatch_float_dtype(out_dtype, [&](auto tag) {
    constexpr DType kOut = decltype(tag)::value;
    dequantize_4bit_kernel<kOut><<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        in.codes, in.absmax, in.numel, log2_exact(in.blocksize), table,
        static_cast<typename CudaOutputElement<kOut>::type*>(out));
  });
  SHARDLORA_CUDA_CHECK_LAUNCH();
}

}  // namespace shardlora::kernels
