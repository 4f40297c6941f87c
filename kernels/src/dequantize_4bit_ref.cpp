// Scalar oracle for dequantize_4bit: the definition, one element at a time.
#include "common/store_element.h"
#include "shardlora/kernels/dequantize_4bit.h"

namespace shardlora::kernels {

void dequantize_4bit_ref(const Packed4bit& in, void* out, DType out_dtype) {
  const float* code = quant_type_traits(in.type).code;
  dispatch_float_dtype(out_dtype, [&](auto tag) {
    using Element = OutputElement<decltype(tag)::value>;
    auto* dst = static_cast<typename Element::type*>(out);
    for (int64_t i = 0; i < in.numel; ++i) {
      const uint8_t byte = in.codes[i / 2];
      const int q = (i % 2 == 0) ? (byte >> 4) : (byte & 0x0f);
      dst[i] = Element::from_float(code[q] * in.absmax[i / in.blocksize]);
    }
  });
}

}  // namespace shardlora::kernels
