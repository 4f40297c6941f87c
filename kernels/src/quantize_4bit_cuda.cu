// quantize_4bit on CUDA: one warp per quantization block. Each lane loads blocksize/32
// elements, a shuffle reduction finds the absmax, then each lane packs its pairs. Same
// fp32 reciprocal and rounding as the CPU code, so the bytes are identical.
#include <cfloat>

#include "common/cuda_check.h"
#include "common/load_element.h"
#include "quantize_4bit_impl.h"

namespace shardlora::kernels {
namespace {

constexpr int kWarpsPerBlock = 8;

template <DType kIn, QuantType kType>
__global__ void quantize_4bit_kernel(const typename InputElement<kIn>::type* __restrict__ x, int64_t numel,
                                     int64_t blocksize, int64_t blocks, uint8_t zero_code,
                                     uint8_t* __restrict__ codes, float* __restrict__ absmax_out) {
  using Element = InputElement<kIn>;
  const int lane = threadIdx.x % 32;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t block = warp; block < blocks; block += warps) {
    const int64_t first = block * blocksize;
    const int64_t count = min(blocksize, numel - first);
    float absmax = 0.0f;
    bool finite = true;
    for (int64_t i = lane; i < count; i += 32) {
      const float value = Element::to_float(x[first + i]);
      finite = finite && isfinite(value);
      absmax = fmaxf(absmax, fabsf(value));
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      absmax = fmaxf(absmax, __shfl_xor_sync(0xffffffffu, absmax, offset));
    }
    finite = __all_sync(0xffffffffu, finite);
    if (lane == 0) absmax_out[block] = finite ? absmax : __int_as_float(0x7fc00000);
    const float scale = reciprocal_scale(absmax);
    const int64_t pairs = (count + 1) / 2;
    for (int64_t j = lane; j < pairs; j += 32) {
      const uint8_t high = quantize_4bit_value(kType, Element::to_float(x[first + 2 * j]) * scale);
      const uint8_t low = 2 * j + 1 < count ? quantize_4bit_value(kType, Element::to_float(x[first + 2 * j + 1]) * scale)
                                            : zero_code;
      codes[first / 2 + j] = static_cast<uint8_t>(high << 4 | low);
    }
  }
}

}  // namespace

void quantize_4bit_cuda(const void* input, DType input_dtype, const Quantized4bit& out, Stream stream) {
  const uint8_t zero_code = quant_type_traits(out.type).zero_code;
  const int64_t blocks = (out.numel + out.blocksize - 1) / out.blocksize;
  const auto grid = static_cast<unsigned>(std::min<int64_t>((blocks + kWarpsPerBlock - 1) / kWarpsPerBlock, 1 << 20));
  dispatch_float_dtype(input_dtype, [&](auto tag) {
    constexpr DType kIn = decltype(tag)::value;
    const auto* x = static_cast<const typename InputElement<kIn>::type*>(input);
    auto launch = [&](auto kernel) {
      kernel<<<grid, kWarpsPerBlock * 32, 0, static_cast<cudaStream_t>(stream)>>>(
          x, out.numel, out.blocksize, blocks, zero_code, out.codes, out.absmax);
    };
    if (out.type == QuantType::NF4) {
      launch(quantize_4bit_kernel<kIn, QuantType::NF4>);
    } else {
      launch(quantize_4bit_kernel<kIn, QuantType::FP4>);
    }
  });
  SHARDLORA_CUDA_CHECK_LAUNCH();
}

}  // namespace shardlora::kernels
