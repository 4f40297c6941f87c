// Scalar oracle for quantize_4bit: one block, one element at a time.
#include <cmath>

#include "common/load_element.h"
#include "quantize_4bit_impl.h"

namespace shardlora::kernels {

void quantize_4bit_ref(const void* input, DType input_dtype, const Quantized4bit& out) {
  const uint8_t zero_code = quant_type_traits(out.type).zero_code;
  dispatch_float_dtype(input_dtype, [&](auto tag) {
    using Element = InputElement<decltype(tag)::value>;
    const auto* x = static_cast<const typename Element::type*>(input);
    const int64_t blocks = (out.numel + out.blocksize - 1) / out.blocksize;
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t first = block * out.blocksize;
      const int64_t last = std::min(first + out.blocksize, out.numel);
      float absmax = 0.0f;
      bool finite = true;
      for (int64_t i = first; i < last; ++i) {
        const float value = Element::to_float(x[i]);
        finite = finite && std::isfinite(value);
        absmax = std::max(absmax, std::fabs(value));
      }
      out.absmax[block] = finite ? absmax : NAN;
      const float scale = reciprocal_scale(absmax);
      for (int64_t i = first; i < last; ++i) {
        const uint8_t code = quantize_4bit_value(out.type, Element::to_float(x[i]) * scale);
        uint8_t& byte = out.codes[i / 2];
        byte = (i % 2 == 0) ? static_cast<uint8_t>(code << 4 | zero_code) : static_cast<uint8_t>((byte & 0xf0) | code);
      }
    }
  });
}

}  // namespace shardlora::kernels
