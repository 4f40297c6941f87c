// gemv_4bit: the reference against a dense fp64 product of the dequantized weight, and the
// CPU kernel against the reference within the rigorous fp32 dot-product bound.
#include <gtest/gtest.h>

#include <cmath>

#include "numerics/gemv_cases.h"
#include "tolerances.h"

using namespace shardlora::kernels;
using namespace shardlora::testing;

TEST(Gemv4bitRef, EqualsDenseProductOfDequantizedWeight) {
  const GemvCase gemv = make_gemv_case(QuantType::NF4, 37, 256, 64, 2);
  std::vector<float> dense(static_cast<size_t>(37 * 256));
  dequantize_4bit_ref(gemv.weight.view(QuantType::NF4, 37 * 256, 64), dense.data(), DType::F32);
  std::vector<float> y(37);
  gemv_4bit_ref(gemv.weight.view(QuantType::NF4, 37 * 256, 64), {37, 256}, gemv.x.data(), DType::F32, y.data(), DType::F32);
  for (int r = 0; r < 37; ++r) {
    double sum = 0;
    for (int c = 0; c < 256; ++c) sum += static_cast<double>(dense[r * 256 + c]) * gemv.x[c];
    EXPECT_EQ(y[r], static_cast<float>(sum)) << r;
  }
}

TEST(Gemv4bitCpu, MatchesReferenceWithinDotProductBound) {
  for (const auto& shape : kGemvShapes) {
    for (const QuantType type : kQuant4bitTypes) {
      const GemvCase gemv = make_gemv_case(type, shape.rows, shape.cols, shape.blocksize, 7);
      for (const DType x_dtype : kFloatDTypes) {
        for (const DType y_dtype : kFloatDTypes) {
          const auto x = encode(gemv.x, x_dtype);
          const auto expected = run_gemv_ref(gemv, type, shape, x.data(), x_dtype, y_dtype);
          std::vector<uint8_t> actual(static_cast<size_t>(shape.rows) * dtype_size(y_dtype));
          gemv_4bit(gemv.weight.view(type, shape.rows * shape.cols, shape.blocksize), {shape.rows, shape.cols}, x.data(),
                    x_dtype, actual.data(), y_dtype, Device::cpu());
          expect_gemv_close(gemv, type, shape, x_dtype, y_dtype, expected, actual);
        }
      }
    }
  }
}

TEST(Gemv4bit, RejectsColsThatSplitABlock) {
  const GemvCase gemv = make_gemv_case(QuantType::NF4, 2, 96, 32, 1);
  float y[2];
  EXPECT_THROW(gemv_4bit(gemv.weight.view(QuantType::NF4, 192, 64), {2, 96}, gemv.x.data(), DType::F32, y, DType::F32,
                         Device::cpu()),
               shardlora::Error);
  EXPECT_THROW(gemv_4bit(gemv.weight.view(QuantType::NF4, 192, 32), {3, 96}, gemv.x.data(), DType::F32, y, DType::F32,
                         Device::cpu()),
               shardlora::Error);
}
