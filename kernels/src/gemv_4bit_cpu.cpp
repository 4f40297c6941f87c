// gemv_4bit on the CPU: x is converted to fp32 once; OpenMP threads over rows; per block
// the 16 code values are scaled into a lookup table, and each byte contributes two
// products to an fp32 accumulator.
#include "common/load_element.h"
#include "gemv_4bit_impl.h"

namespace shardlora::kernels {

void gemv_4bit_cpu(const Packed4bit& weight, Gemv4bitShape shape, const void* x, DType x_dtype, void* y,
                   DType y_dtype) {
  const float* code = quant_type_traits(weight.type).code;
  const std::vector<float> x_values = decode_to_float(x, x_dtype, shape.cols);
  const int64_t blocks_per_row = shape.cols / weight.blocksize;
  const int64_t block_bytes = weight.blocksize / 2;
  dispatch_float_dtype(y_dtype, [&](auto tag) {
    using Element = OutputElement<decltype(tag)::value>;
    auto* dst = static_cast<typename Element::type*>(y);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < shape.rows; ++r) {
      float sum = 0.0f;
      for (int64_t b = 0; b < blocks_per_row; ++b) {
        const int64_t block = r * blocks_per_row + b;
        float lut[16];
        for (int q = 0; q < 16; ++q) lut[q] = code[q] * weight.absmax[block];
        const uint8_t* bytes = weight.codes + block * block_bytes;
        const float* xs = x_values.data() + b * weight.blocksize;
        float block_sum = 0.0f;
        for (int64_t j = 0; j < block_bytes; ++j) {
          block_sum += lut[bytes[j] >> 4] * xs[2 * j] + lut[bytes[j] & 0x0f] * xs[2 * j + 1];
        }
        sum += block_sum;
      }
      dst[r] = Element::from_float(sum);
    }
  });
}

}  // namespace shardlora::kernels
