// dequantize_4bit: the scalar reference against hand-computed values and an fp64 model,
// then the CPU kernel against the reference bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "numerics/dequantize_4bit_cases.h"
#include "shardlora/kernels/cpu_features.h"
#include "shardlora/kernels/half_float.h"

using namespace shardlora::kernels;
using namespace shardlora::testing;

TEST(Dequantize4bitRef, HighNibbleFirstThenLow) {
  // bytes 0xF0, 0x7F: codes 15, 0, 7, 15 -> 1.0, -1.0, 0.0, 1.0 (NF4), times absmax 2.
  const uint8_t codes[] = {0xF0, 0x7F};
  const float absmax[] = {2.0f};
  float out[4];
  dequantize_4bit_ref({QuantType::NF4, codes, absmax, 4, 64}, out, DType::F32);
  EXPECT_EQ(out[0], 2.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 0.0f);
  EXPECT_EQ(out[3], 2.0f);
}

TEST(Dequantize4bitRef, OddLengthUsesOnlyHighNibbleOfLastByte) {
  const uint8_t codes[] = {0x8E, 0x3F};  // last low nibble (F) is padding and must be ignored
  const float absmax[] = {1.0f};
  float out[4] = {0, 0, 0, 42.0f};
  dequantize_4bit_ref({QuantType::FP4, codes, absmax, 3, 64}, out, DType::F32);
  const float* fp4 = quant_type_traits(QuantType::FP4).code;
  EXPECT_EQ(out[0], fp4[8]);
  EXPECT_EQ(out[1], fp4[14]);
  EXPECT_EQ(out[2], fp4[3]);
  EXPECT_EQ(out[3], 42.0f) << "wrote past numel";
}

TEST(Dequantize4bitRef, EachBlockUsesItsOwnAbsmax) {
  const int64_t numel = 100, blocksize = 32;
  const auto tensor = make_random_4bit(numel, blocksize, 7);
  std::vector<float> out(numel);
  dequantize_4bit_ref(tensor.view(QuantType::NF4, numel, blocksize), out.data(), DType::F32);
  const float* nf4 = quant_type_traits(QuantType::NF4).code;
  for (int64_t i = 0; i < numel; ++i) {
    const int q = (i % 2 == 0) ? tensor.codes[i / 2] >> 4 : tensor.codes[i / 2] & 15;
    const double expected = static_cast<double>(nf4[q]) * tensor.absmax[i / blocksize];
    // fp32 product of two fp32 values: within half an ulp of the exact product.
    EXPECT_NEAR(out[i], expected, std::abs(expected) * 6e-8) << "element " << i;
  }
}

TEST(Dequantize4bitRef, RoundsToHalfAndBfloat16FromTheFp32Product) {
  const int64_t numel = 4097, blocksize = 64;
  const auto tensor = make_random_4bit(numel, blocksize, 11);
  const Packed4bit view = tensor.view(QuantType::NF4, numel, blocksize);
  std::vector<float> f32(numel);
  std::vector<uint16_t> f16(numel), bf16(numel);
  dequantize_4bit_ref(view, f32.data(), DType::F32);
  dequantize_4bit_ref(view, f16.data(), DType::F16);
  dequantize_4bit_ref(view, bf16.data(), DType::BF16);
  for (int64_t i = 0; i < numel; ++i) {
    ASSERT_EQ(f16[i], float_to_f16_bits(f32[i])) << i;
    ASSERT_EQ(bf16[i], float_to_bf16_bits(f32[i])) << i;
  }
}

class Dequantize4bitCpu : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { set_cpu_simd_enabled(GetParam()); }
  void TearDown() override { set_cpu_simd_enabled(true); }
};

TEST_P(Dequantize4bitCpu, EqualsReferenceBitForBit) {
  for (const QuantType type : kQuant4bitTypes) {
    for (const int64_t blocksize : {32, 64, 128, 4096}) {
      for (const int64_t numel : kAwkwardSizes) {
        const auto tensor = make_random_4bit(numel, blocksize, static_cast<uint32_t>(numel * 31 + blocksize));
        for (const DType dtype : kFloatDTypes) {
          auto expected = output_buffer(numel, dtype);
          auto actual = output_buffer(numel, dtype);
          dequantize_4bit_ref(tensor.view(type, numel, blocksize), expected.data(), dtype);
          dequantize_4bit(tensor.view(type, numel, blocksize), actual.data(), dtype, Device::cpu());
          ASSERT_EQ(0, std::memcmp(expected.data(), actual.data(), actual.size()))
              << quant_type_traits(type).name << " blocksize " << blocksize << " numel " << numel
              << " " << dtype_name(dtype);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(SimdAndScalar, Dequantize4bitCpu, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "simd" : "scalar"; });

TEST(Dequantize4bit, RejectsBadArguments) {
  const auto tensor = make_random_4bit(64, 64, 1);
  float out[64];
  auto expect_error = [&](Packed4bit view, DType dtype, const char* fragment) {
    try {
      dequantize_4bit(view, out, dtype, Device::cpu());
      ADD_FAILURE() << "no error for " << fragment;
    } catch (const shardlora::Error& error) {
      EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos) << error.what();
    }
  };
  expect_error(tensor.view(QuantType::NF4, 64, 48), DType::F32, "blocksize 48");
  expect_error(tensor.view(QuantType::NF4, 64, 8192), DType::F32, "blocksize 8192");
  expect_error(tensor.view(QuantType::NF4, 64, 64), DType::U8, "uint8");
  expect_error(tensor.view(QuantType::NF4, -1, 64), DType::F32, "negative");
  expect_error({QuantType::NF4, nullptr, tensor.absmax.data(), 64, 64}, DType::F32, "null");
}
