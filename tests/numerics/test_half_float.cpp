// The kernels' float16 / bfloat16 conversions against libtorch's c10::Half and
// c10::BFloat16, an independent implementation: every 16-bit pattern decodes the same, and
// encoding agrees on edge cases and on millions of random floats.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "shardlora/kernels/half_float.h"

using namespace shardlora::kernels;

namespace {

uint16_t torch_f16_bits(float value) { return c10::Half(value).x; }
uint16_t torch_bf16_bits(float value) { return c10::BFloat16(value).x; }

bool same_float(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || float_bits(a) == float_bits(b);
}

std::vector<float> edge_cases() {
  std::vector<float> values = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.99f, 65520.0f, 65536.0f,
                               1e10f, -1e10f, 6.103515625e-05f, 6.0975552e-05f, 5.9604645e-08f,
                               2.9802322e-08f, 2.9802326e-08f, 8.940697e-08f, 1e-30f,
                               std::numeric_limits<float>::denorm_min(),
                               std::numeric_limits<float>::max(),
                               std::numeric_limits<float>::infinity(),
                               -std::numeric_limits<float>::infinity()};
  // Exact ties between neighbouring halves and bfloat16s: round-to-even must pick the even one.
  for (uint32_t half_bits : {0x0001u, 0x0002u, 0x03ffu, 0x0400u, 0x3c00u, 0x3c01u, 0x7bfeu}) {
    const float low = f16_bits_to_float(static_cast<uint16_t>(half_bits));
    const float high = f16_bits_to_float(static_cast<uint16_t>(half_bits + 1));
    values.push_back(static_cast<float>((static_cast<double>(low) + high) / 2));
  }
  for (uint32_t bf_bits : {0x3f80u, 0x3f81u, 0x0080u, 0x7f7eu}) {
    values.push_back(bits_float((bf_bits << 16) | 0x8000u));
  }
  return values;
}

}  // namespace

TEST(HalfFloat, EveryFloat16PatternDecodesLikeTorch) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    c10::Half half;
    half.x = static_cast<uint16_t>(bits);
    ASSERT_TRUE(same_float(f16_bits_to_float(static_cast<uint16_t>(bits)), static_cast<float>(half)))
        << std::hex << bits;
  }
}

TEST(HalfFloat, EdgeCasesEncodeLikeTorch) {
  for (float value : edge_cases()) {
    for (float signed_value : {value, -value}) {
      EXPECT_EQ(float_to_f16_bits(signed_value), torch_f16_bits(signed_value)) << signed_value;
      EXPECT_EQ(float_to_bf16_bits(signed_value), torch_bf16_bits(signed_value)) << signed_value;
    }
  }
  EXPECT_TRUE(std::isnan(f16_bits_to_float(float_to_f16_bits(std::nanf("")))));
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(std::nanf("")))));
}

TEST(HalfFloat, RandomBitPatternsEncodeLikeTorch) {
  std::mt19937 rng(2024);
  std::uniform_int_distribution<uint32_t> any_bits;
  for (int i = 0; i < 4'000'000; ++i) {
    const float value = bits_float(any_bits(rng));
    if (std::isnan(value)) continue;  // NaN payloads differ legitimately; checked above
    ASSERT_EQ(float_to_f16_bits(value), torch_f16_bits(value)) << value;
    ASSERT_EQ(float_to_bf16_bits(value), torch_bf16_bits(value)) << value;
  }
}
