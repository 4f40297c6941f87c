// Shapes, inputs and the tolerance check shared by the CPU and CUDA gemv_4bit tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "numerics/quantize_cases.h"
#include "shardlora/kernels/gemv_4bit.h"
#include "tolerances.h"

namespace shardlora::testing {

struct GemvShape {
  int64_t rows, cols, blocksize;
};

inline const std::vector<GemvShape> kGemvShapes = {
    {1, 64, 64}, {7, 128, 64}, {33, 4096, 64}, {65, 320, 32}, {4, 2048, 2048}, {130, 1056, 32}};

struct GemvCase {
  Quantized weight;
  std::vector<float> x;
};

inline GemvCase make_gemv_case(kernels::QuantType type, int64_t rows, int64_t cols, int64_t blocksize, uint32_t seed) {
  GemvCase gemv;
  gemv.weight = quantize_f32(type, normal_values(rows * cols, seed), blocksize);
  gemv.x = normal_values(cols, seed + 1);
  return gemv;
}

inline double decode(const uint8_t* bytes, int64_t i, kernels::DType dtype) {
  if (dtype == kernels::DType::F32) {
    float value;
    std::memcpy(&value, bytes + 4 * i, 4);
    return value;
  }
  uint16_t bits;
  std::memcpy(&bits, bytes + 2 * i, 2);
  return dtype == kernels::DType::F16 ? kernels::f16_bits_to_float(bits) : kernels::bf16_bits_to_float(bits);
}

inline std::vector<uint8_t> run_gemv_ref(const GemvCase& gemv, kernels::QuantType type, const GemvShape& shape,
                                         const void* x, kernels::DType x_dtype, kernels::DType y_dtype) {
  std::vector<uint8_t> y(static_cast<size_t>(shape.rows) * kernels::dtype_size(y_dtype));
  kernels::gemv_4bit_ref(gemv.weight.view(type, shape.rows * shape.cols, shape.blocksize), {shape.rows, shape.cols}, x,
                         x_dtype, y.data(), y_dtype);
  return y;
}

// |actual - reference| within the fp32 dot-product bound of each row.
inline void expect_gemv_close(const GemvCase& gemv, kernels::QuantType type, const GemvShape& shape,
                              kernels::DType x_dtype, kernels::DType y_dtype, const std::vector<uint8_t>& expected,
                              const std::vector<uint8_t>& actual) {
  std::vector<float> dense(static_cast<size_t>(shape.rows * shape.cols));
  kernels::dequantize_4bit_ref(gemv.weight.view(type, shape.rows * shape.cols, shape.blocksize), dense.data(),
                               kernels::DType::F32);
  const auto x = encode(gemv.x, x_dtype);
  for (int64_t r = 0; r < shape.rows; ++r) {
    double sum_abs = 0;
    for (int64_t c = 0; c < shape.cols; ++c) sum_abs += std::fabs(dense[r * shape.cols + c] * decode(x.data(), c, x_dtype));
    const double reference = decode(expected.data(), r, y_dtype);
    const double tolerance = dot_product_tolerance(shape.cols, sum_abs, reference, y_dtype);
    ASSERT_NEAR(decode(actual.data(), r, y_dtype), reference, tolerance)
        << kernels::quant_type_traits(type).name << " " << shape.rows << "x" << shape.cols << " bs " << shape.blocksize
        << " x " << kernels::dtype_name(x_dtype) << " y " << kernels::dtype_name(y_dtype) << " row " << r;
  }
}

}  // namespace shardlora::testing
