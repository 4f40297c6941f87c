// Double quantization: the dynamic 8-bit maps, blockwise 8-bit rounding, the CPU kernels
// against the references, the offset from ordered chunk sums, the effect on 4-bit scales
// and the block-range property at 64 x 256 alignment.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "numerics/quantize_cases.h"
#include "shardlora/kernels/blockwise_8bit.h"
#include "tolerances.h"

using namespace shardlora::kernels;
using namespace shardlora::testing;

namespace {

struct DoubleQuantized {
  float offset = 0;
  std::vector<uint8_t> codes;    // one per 4-bit absmax
  std::vector<float> absmax;     // one per 256 absmax
};

DoubleQuantized double_quantize(const std::vector<float>& absmax, float offset) {
  DoubleQuantized result;
  result.offset = offset;
  const int64_t count = static_cast<int64_t>(absmax.size());
  result.codes.resize(absmax.size());
  result.absmax.resize(static_cast<size_t>((count + 255) / 256));
  quantize_8bit_blockwise(absmax.data(), offset, {QuantType::DYNAMIC8_SIGNED, count, 256}, result.codes.data(),
                          result.absmax.data(), Device::cpu());
  return result;
}

float mean_of(const std::vector<float>& values) {
  std::vector<double> sums((values.size() + 255) / 256);
  chunk_sums_f64(values.data(), static_cast<int64_t>(values.size()), 256, sums.data(), Device::cpu());
  return absmax_mean(sums.data(), static_cast<int64_t>(sums.size()), static_cast<int64_t>(values.size()));
}

}  // namespace

// FNV-1a (64-bit) over the 256 float bit patterns, little endian.
uint64_t map_fingerprint(const float* map) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (int i = 0; i < 256; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &map[i], 4);
    for (int byte = 0; byte < 4; ++byte) {
      hash ^= (bits >> (8 * byte)) & 0xffu;
      hash *= 0x100000001b3ull;
    }
  }
  return hash;
}

TEST(DynamicMap, EqualsBitsandbytesMapAsTorchComputesIt) {
  // bitsandbytes' create_dynamic_map(signed) evaluated by torch 2.11.0 (x86, AVX-512 kernels)
  // on the GPU box, fingerprinted; see docs/QUANTIZATION.md.
  EXPECT_EQ(map_fingerprint(quant_type_traits(QuantType::DYNAMIC8_SIGNED).code), 0xd677f22a96665bc4ull);
  EXPECT_EQ(map_fingerprint(quant_type_traits(QuantType::DYNAMIC8_UNSIGNED).code), 0x43811b16730a873eull);
}

TEST(DynamicMap, SignedHasBitsandbytesShape) {
  const auto& traits = quant_type_traits(QuantType::DYNAMIC8_SIGNED);
  ASSERT_EQ(traits.code_count, 256);
  const float* map = traits.code;
  for (int i = 1; i < 256; ++i) ASSERT_LT(map[i - 1], map[i]) << i;
  EXPECT_EQ(map[127], 0.0f);
  EXPECT_EQ(map[255], 1.0f);
  EXPECT_NEAR(map[0], -0.99297, 1e-5);
  EXPECT_NEAR(map[128], 5.5e-7, 1e-12) << "smallest positive: 1e-6 * mean(0.1, 1)";
  // Values per decade from 1e-7 up to 1: 1, 2, 4, ..., 64 (then the extra 1.0).
  int per_decade[7] = {};
  for (int i = 128; i < 255; ++i) per_decade[static_cast<int>(std::floor(std::log10(map[i]))) + 7]++;
  for (int decade = 0; decade < 7; ++decade) EXPECT_EQ(per_decade[decade], 1 << decade) << decade;
  EXPECT_EQ(traits.zero_code, 127);
}

TEST(DynamicMap, UnsignedHasBitsandbytesShape) {
  const float* map = quant_type_traits(QuantType::DYNAMIC8_UNSIGNED).code;
  for (int i = 1; i < 256; ++i) ASSERT_LT(map[i - 1], map[i]) << i;
  EXPECT_EQ(map[0], 0.0f);
  EXPECT_EQ(map[255], 1.0f);
  EXPECT_NEAR(map[1], 3.25e-7, 1e-12);
}

TEST(Blockwise8bitRef, RoundsToTheNearestMapEntry) {
  const float* map = quant_type_traits(QuantType::DYNAMIC8_SIGNED).code;
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> uniform(-0.99f, 0.99f);
  for (int trial = 0; trial < 20000; ++trial) {
    std::vector<float> block = {1.0f, uniform(rng)};  // absmax 1: the value reaches the map unscaled
    uint8_t codes[2];
    float absmax;
    quantize_8bit_blockwise_ref(block.data(), 0.0f, {QuantType::DYNAMIC8_SIGNED, 2, 256}, codes, &absmax);
    double best = INFINITY;
    for (int i = 0; i < 256; ++i) best = std::min(best, std::fabs(static_cast<double>(block[1]) - map[i]));
    ASSERT_LE(std::fabs(static_cast<double>(block[1]) - map[codes[1]]), best + 1e-7) << block[1];
  }
}

TEST(Blockwise8bitCpu, EqualsReferenceBitForBit) {
  for (const QuantType map : {QuantType::DYNAMIC8_SIGNED, QuantType::DYNAMIC8_UNSIGNED}) {
    for (const int64_t numel : kAwkwardSizes) {
      auto values = normal_values(numel, static_cast<uint32_t>(numel));
      if (map == QuantType::DYNAMIC8_UNSIGNED) for (auto& v : values) v = std::fabs(v);
      const Blockwise8bit shape{map, numel, 256};
      const size_t blocks = static_cast<size_t>((numel + 255) / 256);
      std::vector<uint8_t> codes_ref(numel), codes_cpu(numel);
      std::vector<float> absmax_ref(blocks), absmax_cpu(blocks), out_ref(numel), out_cpu(numel);
      quantize_8bit_blockwise_ref(values.data(), 0.125f, shape, codes_ref.data(), absmax_ref.data());
      quantize_8bit_blockwise(values.data(), 0.125f, shape, codes_cpu.data(), absmax_cpu.data(), Device::cpu());
      ASSERT_EQ(codes_ref, codes_cpu) << numel;
      ASSERT_EQ(0, std::memcmp(absmax_ref.data(), absmax_cpu.data(), blocks * sizeof(float)));
      dequantize_8bit_blockwise_ref(codes_ref.data(), absmax_ref.data(), 0.125f, shape, out_ref.data());
      dequantize_8bit_blockwise(codes_ref.data(), absmax_ref.data(), 0.125f, shape, out_cpu.data(), Device::cpu());
      ASSERT_EQ(0, std::memcmp(out_ref.data(), out_cpu.data(), out_ref.size() * sizeof(float)));
    }
  }
}

TEST(ChunkSums, CpuEqualsReferenceAndSumsAccurately) {
  const auto values = normal_values(100003, 4);
  std::vector<double> ref((values.size() + 255) / 256), cpu(ref.size());
  chunk_sums_f64_ref(values.data(), static_cast<int64_t>(values.size()), 256, ref.data());
  chunk_sums_f64(values.data(), static_cast<int64_t>(values.size()), 256, cpu.data(), Device::cpu());
  ASSERT_EQ(0, std::memcmp(ref.data(), cpu.data(), ref.size() * sizeof(double)));
  long double exact = 0;
  for (float v : values) exact += v;
  EXPECT_NEAR(static_cast<double>(exact) / values.size(),
              absmax_mean(cpu.data(), static_cast<int64_t>(cpu.size()), static_cast<int64_t>(values.size())), 1e-7);
}

TEST(DoubleQuant, ChangesEachBlockScaleByLessThanOnePercent) {
  const int64_t numel = int64_t{1} << 22;
  const auto weight = normal_values(numel, 21);
  const auto packed = quantize_f32(QuantType::NF4, weight, 64);
  const auto dq = double_quantize(packed.absmax, mean_of(packed.absmax));
  std::vector<float> scales(packed.absmax.size());
  dequantize_8bit_blockwise(dq.codes.data(), dq.absmax.data(), dq.offset,
                            {QuantType::DYNAMIC8_SIGNED, static_cast<int64_t>(scales.size()), 256}, scales.data(),
                            Device::cpu());
  double worst = 0;
  for (size_t b = 0; b < scales.size(); ++b) {
    worst = std::max(worst, std::fabs(static_cast<double>(scales[b]) - packed.absmax[b]) / packed.absmax[b]);
  }
  EXPECT_LT(worst, kDoubleQuantMaxScaleChange);
  EXPECT_GT(worst, 0.0) << "8-bit absmax cannot be exact for every block";
}

TEST(DoubleQuant, AlignedBlockRangesWithSharedOffsetMatchTheWholeTensor) {
  // Two "ranks" split a tensor at a 64 x 256 element boundary. Each quantizes its range,
  // contributes its chunk sums, and double-quantizes its absmax with the agreed offset.
  const int64_t blocksize = 64, aligned = 64 * 256, numel = 5 * aligned + 999;
  const auto weight = normal_values(numel, 8);
  const auto whole = quantize_f32(QuantType::NF4, weight, blocksize);
  const auto whole_dq = double_quantize(whole.absmax, mean_of(whole.absmax));

  const int64_t split = 3 * aligned;
  const std::vector<float> first(weight.begin(), weight.begin() + split), second(weight.begin() + split, weight.end());
  const auto part1 = quantize_f32(QuantType::NF4, first, blocksize);
  const auto part2 = quantize_f32(QuantType::NF4, second, blocksize);
  std::vector<double> sums;
  for (const auto* part : {&part1, &part2}) {
    std::vector<double> part_sums((part->absmax.size() + 255) / 256);
    chunk_sums_f64(part->absmax.data(), static_cast<int64_t>(part->absmax.size()), 256, part_sums.data(), Device::cpu());
    sums.insert(sums.end(), part_sums.begin(), part_sums.end());  // the all-gather
  }
  const float offset = absmax_mean(sums.data(), static_cast<int64_t>(sums.size()), static_cast<int64_t>(whole.absmax.size()));
  EXPECT_EQ(offset, whole_dq.offset);
  const auto dq1 = double_quantize(part1.absmax, offset), dq2 = double_quantize(part2.absmax, offset);
  std::vector<uint8_t> codes = dq1.codes;
  codes.insert(codes.end(), dq2.codes.begin(), dq2.codes.end());
  std::vector<float> absmax2 = dq1.absmax;
  absmax2.insert(absmax2.end(), dq2.absmax.begin(), dq2.absmax.end());
  EXPECT_EQ(codes, whole_dq.codes);
  ASSERT_EQ(absmax2.size(), whole_dq.absmax.size());
  EXPECT_EQ(0, std::memcmp(absmax2.data(), whole_dq.absmax.data(), absmax2.size() * sizeof(float)));
  std::vector<uint8_t> nibbles = part1.codes;
  nibbles.insert(nibbles.end(), part2.codes.begin(), part2.codes.end());
  EXPECT_EQ(nibbles, whole.codes);
}
