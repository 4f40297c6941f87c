// quantize_4bit on the CPU: OpenMP threads over blocks; within a block one pass for the
// absmax and one that packs code pairs. The pivot-count rounding has no branches, so the
// compiler vectorizes the packing loop.
#include <algorithm>
#include <cmath>

#include "common/load_element.h"
#include "quantize_4bit_impl.h"

namespace shardlora::kernels {
namespace {

template <DType kIn, QuantType kType>
void quantize_blocks(const typename InputElement<kIn>::type* x, const Quantized4bit& out, uint8_t zero_code) {
  using Element = InputElement<kIn>;
  const int64_t blocks = (out.numel + out.blocksize - 1) / out.blocksize;
#pragma omp parallel for schedule(static)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t first = block * out.blocksize;
    const int64_t count = std::min(out.blocksize, out.numel - first);
    const auto* src = x + first;
    float absmax = 0.0f;
    bool finite = true;
    for (int64_t i = 0; i < count; ++i) {
      const float value = Element::to_float(src[i]);
      finite &= std::isfinite(value);
      absmax = std::max(absmax, std::fabs(value));
    }
    out.absmax[block] = finite ? absmax : NAN;
    const float scale = reciprocal_scale(absmax);
    uint8_t* dst = out.codes + first / 2;
    const int64_t pairs = count / 2;
    for (int64_t j = 0; j < pairs; ++j) {
      const uint8_t high = quantize_4bit_value(kType, Element::to_float(src[2 * j]) * scale);
      const uint8_t low = quantize_4bit_value(kType, Element::to_float(src[2 * j + 1]) * scale);
      dst[j] = static_cast<uint8_t>(high << 4 | low);
    }
    if (count % 2) {
      dst[pairs] = static_cast<uint8_t>(quantize_4bit_value(kType, Element::to_float(src[count - 1]) * scale) << 4 | zero_code);
    }
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
