// quantize_4bit on the CPU: OpenMP threads over blocks. Each block is widened to fp32 once,
// its absmax found as an integer max over |x| bit patterns (for non-NaN floats the same
// order, so it vectorizes without fast-math; NaN is skipped as std::max / fmaxf skip it,
// and patterns >= 0x7f800000 flag the block as non-finite), then
// codes are computed in one contiguous loop (the pivot count has no branches, so it
// vectorizes) and packed in pairs. Same fp32 products as the reference: identical bytes.
#include <algorithm>
#include <cmath>

#include "common/load_element.h"
#include "quantize_4bit_impl.h"

namespace shardlora::kernels {
namespace {

constexpr int64_t kMaxBlocksize = 4096;

template <DType kIn, QuantType kType>
void quantize_blocks(const typename InputElement<kIn>::type* x, const Quantized4bit& out, uint8_t zero_code) {
  using Element = InputElement<kIn>;
  const int64_t blocks = (out.numel + out.blocksize - 1) / out.blocksize;
#pragma omp parallel for schedule(static)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t first = block * out.blocksize;
    const int64_t count = std::min(out.blocksize, out.numel - first);
    const auto* src = x + first;
    alignas(64) float values[kMaxBlocksize];
    alignas(64) uint8_t codes[kMaxBlocksize + 1];
    uint32_t max_bits = 0, nonfinite = 0;
    for (int64_t i = 0; i < count; ++i) {
      values[i] = Element::to_float(src[i]);
      const uint32_t magnitude = float_bits(values[i]) & 0x7fffffffu;
      nonfinite |= magnitude >= 0x7f800000u;
      max_bits = std::max(max_bits, magnitude > 0x7f800000u ? 0u : magnitude);
    }
    const float absmax = bits_float(max_bits);
    out.absmax[block] = nonfinite ? NAN : absmax;
    const float scale = reciprocal_scale(absmax);
    for (int64_t i = 0; i < count; ++i) codes[i] = quantize_4bit_value(kType, values[i] * scale);
    codes[count] = zero_code;  // pads an odd tail
    uint8_t* dst = out.codes + first / 2;
    for (int64_t j = 0; j < (count + 1) / 2; ++j) dst[j] = static_cast<uint8_t>(codes[2 * j] << 4 | codes[2 * j + 1]);
  }
}

}  // namespace

void quantize_4bit_cpu(const void* input, DType input_dtype, const Quantized4bit& out) {
  const uint8_t zero_code = quant_type_traits(out.type).zero_code;
  dispatch_float_dtype(input_dtype, [&](auto tag) {
    constexpr DType kIn = decltype(tag)::value;
    const auto* x = static_cast<const typename InputElement<kIn>::type*>(input);
    if (out.type == QuantType::NF4) {
      quantize_blocks<kIn, QuantType::NF4>(x, out, zero_code);
    } else {
      quantize_blocks<kIn, QuantType::FP4>(x, out, zero_code);
    }
  });
}

}  // namespace shardlora::kernels
