// The quant-type traits table against the values bitsandbytes publishes (FORMATS.md §1.1-1.2).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "shardlora/kernels/quant_types.h"

using namespace shardlora::kernels;

namespace {

// Decimal values as printed by bitsandbytes (functional.py / kernels.cu); each is the
// shortest round-trip text of a float32, so parsing it as float must give the exact bits.
const char* const kPublishedNf4[16] = {
    "-1.0", "-0.6961928009986877", "-0.5250730514526367", "-0.39491748809814453",
    "-0.28444138169288635", "-0.18477343022823334", "-0.09105003625154495", "0.0",
    "0.07958029955625534", "0.16093020141124725", "0.24611230194568634", "0.33791524171829224",
    "0.44070982933044434", "0.5626170039176941", "0.7229568362236023", "1.0"};

// FP4 raw E2M1 values in bit-pattern order, normalised by 12.
const double kPublishedFp4Raw[16] = {0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3};

}  // namespace

TEST(QuantTypes, Nf4TableIsBitsandbytesTable) {
  const auto& nf4 = quant_type_traits(QuantType::NF4);
  EXPECT_STREQ(nf4.name, "nf4");
  EXPECT_EQ(nf4.bits, 4);
  ASSERT_EQ(nf4.code_count, 16);
  for (int q = 0; q < 16; ++q) {
    EXPECT_EQ(nf4.code[q], std::strtof(kPublishedNf4[q], nullptr)) << "code " << q;
  }
  for (int q = 1; q < 16; ++q) EXPECT_LT(nf4.code[q - 1], nf4.code[q]) << "NF4 must be sorted";
  EXPECT_EQ(nf4.code[nf4.zero_code], 0.0f);
  EXPECT_EQ(nf4.zero_code, 7);
}

TEST(QuantTypes, Fp4TableIsBitPatternOrderWithSignBit3) {
  const auto& fp4 = quant_type_traits(QuantType::FP4);
  EXPECT_STREQ(fp4.name, "fp4");
  ASSERT_EQ(fp4.code_count, 16);
  for (int q = 0; q < 16; ++q) {
    EXPECT_NEAR(fp4.code[q], kPublishedFp4Raw[q] / 12.0, 1e-7) << "code " << q;
    EXPECT_EQ(std::signbit(fp4.code[q]), (q & 0b1000) != 0) << "sign bit of code " << q;
    if (q < 8) EXPECT_EQ(fp4.code[q], -fp4.code[q | 0b1000]) << "magnitude of code " << q;
  }
  EXPECT_EQ(fp4.code[fp4.zero_code], 0.0f);
  EXPECT_FALSE(std::signbit(fp4.code[fp4.zero_code]));
}

TEST(QuantTypes, ParseNames) {
  QuantType type = QuantType::FP4;
  ASSERT_TRUE(parse_quant_type("nf4", &type));
  EXPECT_EQ(type, QuantType::NF4);
  ASSERT_TRUE(parse_quant_type("fp4", &type));
  EXPECT_EQ(type, QuantType::FP4);
  EXPECT_FALSE(parse_quant_type("NF4x", &type));
  EXPECT_FALSE(parse_quant_type("", &type));
}

TEST(QuantTypes, FrozenIds) {
  // Ids are written into files: changing one breaks every checkpoint on disk.
  EXPECT_EQ(static_cast<int>(QuantType::NF4), 0);
  EXPECT_EQ(static_cast<int>(QuantType::FP4), 1);
  EXPECT_THROW(quant_type_traits(static_cast<QuantType>(kQuantTypeCount)), shardlora::Error);
}

TEST(QuantTypes, BlocksizesAreBitsandbytes) {
  for (int64_t blocksize = 32; blocksize <= 4096; blocksize *= 2) {
    EXPECT_TRUE(is_valid_4bit_blocksize(blocksize)) << blocksize;
  }
  for (int64_t bad : {0, 1, 16, 48, 96, 8192, -64}) EXPECT_FALSE(is_valid_4bit_blocksize(bad)) << bad;
}
