// Scalar oracle for gemv_4bit: dequantize each weight in fp32 (as dequantize_4bit does)
// and accumulate the products in fp64.
#include "common/load_element.h"
#include "shardlora/kernels/gemv_4bit.h"

namespace shardlora::kernels {

void gemv_4bit_ref(const Packed4bit& weight, Gemv4bitShape shape, const void* x, DType x_dtype, void* y,
                   DType y_dtype) {
  const float* code = quant_type_traits(weight.type).code;
  const std::vector<float> x_values = decode_to_float(x, x_dtype, shape.cols);
  dispatch_float_dtype(y_dtype, [&](auto tag) {
    using Element = OutputElement<decltype(tag)::value>;
    auto* dst = static_cast<typename Element::type*>(y);
    for (int64_t r = 0; r < shape.rows; ++r) {
      double sum = 0.0;
      for (int64_t c = 0; c < shape.cols; ++c) {
        const int64_t i = r * shape.cols + c;
        const int q = (i % 2 == 0) ? weight.codes[i / 2] >> 4 : weight.codes[i / 2] & 0x0f;
        const float w = code[q] * weight.absmax[i / weight.blocksize];
        sum += static_cast<double>(w) * static_cast<double>(x_values[c]);
      }
      dst[r] = Element::from_float(static_cast<float>(sum));
    }
  });
}

}  // namespace shardlora::kernels
