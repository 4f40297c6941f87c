// quantize_4bit: rounding against bitsandbytes' published pivots and an independent
// nearest-code search in fp64, packing, round trips, the error budget on N(0,1), zero and
// non-finite blocks, the block-range property, and the CPU kernel against the reference.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "numerics/quantize_cases.h"
#include "shardlora/kernels/dequantize_4bit.h"
#include "shardlora/kernels/quantize_4bit.h"
#include "tolerances.h"

using namespace shardlora::kernels;
using namespace shardlora::testing;

namespace {

// Codes of `values` quantized as one block (absmax is taken from the values).
std::vector<uint8_t> codes_of(QuantType type, const std::vector<float>& values) {
  std::vector<uint8_t> bytes((values.size() + 1) / 2);
  float absmax = 0;
  quantize_4bit_ref(values.data(), DType::F32, {type, bytes.data(), &absmax, static_cast<int64_t>(values.size()), 4096});
  std::vector<uint8_t> codes;
  for (size_t i = 0; i < values.size(); ++i) codes.push_back(i % 2 ? bytes[i / 2] & 15 : bytes[i / 2] >> 4);
  return codes;
}

uint8_t code_of(QuantType type, float scaled) {
  // A block of {1, scaled} has absmax 1, so `scaled` reaches the rounding unchanged.
  return codes_of(type, {1.0f, scaled})[1];
}

// Independent rounding: the nearest code in fp64. NF4 ties go to the lower code; FP4 takes
// the sign from x < 0 and ties go to the smaller magnitude.
uint8_t nearest_code(QuantType type, float scaled) {
  const float* code = quant_type_traits(type).code;
  int best = -1;
  double best_distance = INFINITY;
  for (int q = 0; q < 16; ++q) {
    if (type == QuantType::FP4 && std::signbit(code[q]) != (scaled < 0)) continue;
    const double distance = std::fabs(static_cast<double>(scaled) - code[q]);
    const bool smaller_tie = distance == best_distance && type == QuantType::FP4 && std::fabs(code[q]) < std::fabs(code[best]);
    if (distance < best_distance || smaller_tie) {
      best = q;
      best_distance = distance;
    }
  }
  return static_cast<uint8_t>(best);
}

// bitsandbytes' FP4 pivots are decimals cut short (0.583333 for 7/12): values that close
// to a true midpoint may legitimately round the other way.
bool near_fp4_midpoint(float scaled) {
  const float* code = quant_type_traits(QuantType::FP4).code;
  for (int a = 0; a < 8; ++a) {
    for (int b = 0; b < 8; ++b) {
      if (std::fabs(std::fabs(scaled) - (std::fabs(code[a]) + std::fabs(code[b])) / 2) < 1e-6) return true;
    }
  }
  return false;
}

}  // namespace

TEST(Quantize4bitRef, Nf4PivotsAreMidpointsAndTiesGoLow) {
  // bitsandbytes' decision-tree pivots (csrc/kernels.cu dQuantizeNF4), between code q and q+1.
  // They are midpoints of the fp64 code values, so they can sit an ulp away from the fp32 ones.
  const float pivots[15] = {-0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f,
                            -0.33967943489551544f, -0.23460740596055984f, -0.13791173323988914f,
                            -0.045525018125772476f, 0.03979014977812767f, 0.1202552504837513f,
                            0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
                            0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};
  const float* nf4 = quant_type_traits(QuantType::NF4).code;
  for (int q = 0; q < 15; ++q) {
    EXPECT_NEAR(pivots[q], (static_cast<double>(nf4[q]) + nf4[q + 1]) / 2, 1e-7) << q;
    EXPECT_EQ(code_of(QuantType::NF4, pivots[q]), q) << "a value on the pivot takes the lower code " << q;
    EXPECT_EQ(code_of(QuantType::NF4, std::nextafter(pivots[q], 2.0f)), q + 1);
  }
}

TEST(Quantize4bitRef, Fp4SignBitAndMagnitudeTies) {
  EXPECT_EQ(code_of(QuantType::FP4, 0.0f), 0);
  EXPECT_EQ(code_of(QuantType::FP4, -1e-9f), 0b1000) << "small negatives become -0";
  EXPECT_EQ(code_of(QuantType::FP4, 1.0f), 0b0011);
  EXPECT_EQ(code_of(QuantType::FP4, -1.0f), 0b1011);
  // Magnitude midpoint between 1/3 (code 4) and 1/2 (code 5) is 5/12: ties go to the lower.
  EXPECT_EQ(code_of(QuantType::FP4, 0.4166667f), 0b0100);
  EXPECT_EQ(code_of(QuantType::FP4, std::nextafter(0.4166667f, 1.0f)), 0b0101);
}

TEST(Quantize4bitRef, RoundsToNearestCodeOnRandomValues) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (const QuantType type : kQuant4bitTypes) {
    for (int i = 0; i < 200000; ++i) {
      const float x = uniform(rng);
      if (type == QuantType::FP4 && near_fp4_midpoint(x)) continue;
      ASSERT_EQ(code_of(type, x), nearest_code(type, x)) << quant_type_traits(type).name << " x=" << x;
    }
  }
}

TEST(Quantize4bitRef, PacksHighNibbleFirstAndPadsOddTailWithZeroCode) {
  const std::vector<float> values = {1.0f, -1.0f, 0.0f, 0.5f, 0.25f};
  std::vector<uint8_t> bytes(3);
  float absmax = 0;
  quantize_4bit_ref(values.data(), DType::F32, {QuantType::NF4, bytes.data(), &absmax, 5, 64});
  EXPECT_EQ(absmax, 1.0f);
  EXPECT_EQ(bytes[0], 0xF0);  // 1.0 -> 15, -1.0 -> 0
  EXPECT_EQ(bytes[1], 0x7C);  // 0 -> 7, 0.5 -> 12 (0.4407 is nearer than 0.5626)
  EXPECT_EQ(bytes[2], 0xA7);  // 0.25 -> 10, padding -> 7 (the code of 0)
}

TEST(Quantize4bitRef, EveryCodeRoundTripsExactly) {
  for (const QuantType type : kQuant4bitTypes) {
    const float* code = quant_type_traits(type).code;
    for (const float scale : {1.0f, 0.013f, 3.75f, 1e-20f}) {
      std::vector<float> values;
      for (int q = 0; q < 16; ++q) values.push_back(code[q] * scale);
      const auto packed = quantize_f32(type, values, 64);
      std::vector<float> back(values.size());
      dequantize_4bit_ref(packed.view(type, 16, 64), back.data(), DType::F32);
      for (int q = 0; q < 16; ++q) {
        EXPECT_EQ(back[q], values[q]) << quant_type_traits(type).name << " code " << q << " scale " << scale;
      }
    }
  }
}

TEST(Quantize4bitRef, Nf4ErrorOnStandardNormalIsWithinBudget) {
  const int64_t numel = int64_t{1} << 22;
  const auto values = normal_values(numel, 17);
  const auto packed = quantize_f32(QuantType::NF4, values, 64);
  std::vector<float> back(values.size());
  dequantize_4bit(packed.view(QuantType::NF4, numel, 64), back.data(), DType::F32, Device::cpu());
  double total = 0;
  for (int64_t i = 0; i < numel; ++i) total += std::fabs(static_cast<double>(back[i]) - values[i]);
  const double mean_abs_error = total / static_cast<double>(numel);
  EXPECT_LE(mean_abs_error, kNf4Normal64MaxMeanAbsError);
  EXPECT_GE(mean_abs_error, 0.070) << "suspiciously low: is the data really N(0,1)?";
}

TEST(Quantize4bitRef, AllZeroBlockHasZeroAbsmaxAndZeroCodes) {
  for (const QuantType type : kQuant4bitTypes) {
    std::vector<float> values(130, 0.0f);
    values[129] = 2.0f;  // the third block is not all zero
    const auto packed = quantize_f32(type, values, 64);
    EXPECT_EQ(packed.absmax[0], 0.0f);
    EXPECT_EQ(packed.absmax[1], 0.0f);
    const uint8_t zero = quant_type_traits(type).zero_code;
    EXPECT_EQ(packed.codes[0], zero << 4 | zero);
    std::vector<float> back(values.size());
    dequantize_4bit_ref(packed.view(type, 130, 64), back.data(), DType::F32);
    for (int i = 0; i < 128; ++i) ASSERT_EQ(back[i], 0.0f) << i;
    EXPECT_EQ(back[129], 2.0f);
  }
}

TEST(Quantize4bitRef, NonFiniteInputMarksItsBlockAbsmaxNan) {
  for (const float bad : {NAN, INFINITY, -INFINITY}) {
    std::vector<float> values(192, 0.5f);
    values[70] = bad;
    const auto packed = quantize_f32(QuantType::NF4, values, 64);
    EXPECT_EQ(packed.absmax[0], 0.5f);
    EXPECT_TRUE(std::isnan(packed.absmax[1])) << bad;
    EXPECT_EQ(packed.absmax[2], 0.5f);
  }
}

TEST(Quantize4bitCpu, EqualsReferenceBitForBit) {
  for (const QuantType type : kQuant4bitTypes) {
    for (const int64_t blocksize : {32, 64, 256, 4096}) {
      for (const int64_t numel : kAwkwardSizes) {
        for (const DType dtype : kFloatDTypes) {
          const auto input = encoded_normal_values(numel, dtype, static_cast<uint32_t>(numel + blocksize));
          const auto expected = quantize_with(input.data(), dtype, type, numel, blocksize, Backend::Reference);
          const auto actual = quantize_with(input.data(), dtype, type, numel, blocksize, Backend::Cpu);
          ASSERT_TRUE(expected == actual) << quant_type_traits(type).name << " blocksize " << blocksize
                                          << " numel " << numel << " " << dtype_name(dtype);
        }
      }
    }
  }
}

TEST(Quantize4bitCpu, NonFiniteBlocksEqualReferenceToo) {
  auto values = normal_values(64 * 6, 12);
  values[10] = NAN;
  values[64 + 3] = INFINITY;
  values[128 + 5] = -INFINITY;
  values[192 + 1] = NAN;
  values[192 + 2] = INFINITY;
  for (const QuantType type : kQuant4bitTypes) {
    const auto ref = quantize_with(values.data(), DType::F32, type, 64 * 6, 64, Backend::Reference);
    const auto cpu = quantize_with(values.data(), DType::F32, type, 64 * 6, 64, Backend::Cpu);
    EXPECT_EQ(ref.codes, cpu.codes) << quant_type_traits(type).name;
    for (int block = 0; block < 6; ++block) {
      EXPECT_EQ(std::isnan(cpu.absmax[block]), block < 4) << block;
      if (block >= 4) EXPECT_EQ(cpu.absmax[block], ref.absmax[block]);
    }
  }
}

TEST(Quantize4bit, BlockRangeEqualsThatRangeOfTheWholeTensor) {
  const int64_t blocksize = 64, numel = 64 * 1000 + 37;  // the last block is a tail
  const auto values = normal_values(numel, 3);
  const auto whole = quantize_f32(QuantType::NF4, values, blocksize);
  const int64_t blocks = (numel + blocksize - 1) / blocksize;
  for (const auto& [first_block, last_block] : std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {17, 400}, {900, blocks}}) {
    const int64_t first = first_block * blocksize;
    const int64_t count = std::min(last_block * blocksize, numel) - first;
    std::vector<uint8_t> codes((count + 1) / 2);
    std::vector<float> absmax(last_block - first_block);
    quantize_4bit(values.data() + first, DType::F32, {QuantType::NF4, codes.data(), absmax.data(), count, blocksize},
                  Device::cpu());
    EXPECT_EQ(0, std::memcmp(codes.data(), whole.codes.data() + first / 2, codes.size()))
        << "blocks [" << first_block << ", " << last_block << ")";
    EXPECT_EQ(0, std::memcmp(absmax.data(), whole.absmax.data() + first_block, absmax.size() * sizeof(float)));
  }
}

TEST(Quantize4bit, RejectsBadArguments) {
  float input[64] = {};
  uint8_t codes[32];
  float absmax[2];
  EXPECT_THROW(quantize_4bit(input, DType::F32, {QuantType::NF4, codes, absmax, 64, 100}, Device::cpu()), shardlora::Error);
  EXPECT_THROW(quantize_4bit(input, DType::U8, {QuantType::NF4, codes, absmax, 64, 64}, Device::cpu()), shardlora::Error);
  EXPECT_THROW(quantize_4bit(input, DType::F32, {QuantType::DYNAMIC8_SIGNED, codes, absmax, 64, 64}, Device::cpu()),
               shardlora::Error);
  EXPECT_THROW(quantize_4bit(nullptr, DType::F32, {QuantType::NF4, codes, absmax, 64, 64}, Device::cpu()), shardlora::Error);
}
