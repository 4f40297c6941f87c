// The fused AdamW step: the CPU kernel (SSE span + scalar tail, and scalar only; any thread
// count) equals the scalar reference bit for bit, for 32-bit and 8-bit state; the reference
// equals the textbook update computed in fp64 to fp32 rounding; 8-bit state stays close to
// the 32-bit state it approximates; the AVX2 path's 8-bit threshold lookup gives the
// reference search's code on every float near every threshold (white box: kernels/src).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/quantize_8bit_lookup.h"

#include "numerics/adamw_cases.h"
#include "shardlora/kernels/cpu_features.h"
#include "shardlora/kernels/quant_types.h"

using namespace shardlora::kernels;
using namespace shardlora::testing;

namespace {

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class SimdPaths : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { set_cpu_simd_enabled(GetParam()); }
  void TearDown() override { set_cpu_simd_enabled(true); }
};

SHARDLORA_TARGET_AVX2 void quantize_eight(const Quantize8bitLookup& lookup, const float* x, uint8_t* codes) {
  quantize8_avx2(lookup, _mm256_loadu_ps(x), codes);
}

}  // namespace

TEST(Quantize8bitLookup, GivesTheSearchsCodeAroundEveryThresholdAndAcrossAllFloats) {
  if (!cpu_has_avx2()) GTEST_SKIP() << "no AVX2 on this CPU: the lookup is not used";
  for (const QuantType type : {QuantType::DYNAMIC8_SIGNED, QuantType::DYNAMIC8_UNSIGNED}) {
    const Quantize8bitLookup& lookup = Quantize8bitLookup::for_map(type);
    std::vector<float> values;
    for (int k = 1; k < 256; ++k) {
      for (int64_t d = -3; d <= 3; ++d) values.push_back(from_ordered_key(static_cast<int64_t>(lookup.threshold[k]) + d));
    }
    // Every 4099th float from -inf to +inf (and NaN, beyond them), plus the specials.
    for (int64_t key = ordered_key(-std::numeric_limits<float>::infinity()); key <= ordered_key(std::numeric_limits<float>::infinity());
         key += 4099) {
      values.push_back(from_ordered_key(key));
    }
    for (const float special : {0.0f, -0.0f, 1.0f, -1.0f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                                std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                                std::numeric_limits<float>::denorm_min()}) {
      values.push_back(special);
    }
    while (values.size() % 8) values.push_back(0.5f);
    size_t mismatches = 0;
    for (size_t i = 0; i < values.size(); i += 8) {
      uint8_t codes[8];
      quantize_eight(lookup, values.data() + i, codes);
      for (int lane = 0; lane < 8; ++lane) {
        const uint8_t expected = quantize_8bit_value(lookup.map, values[i + lane]);
        if (codes[lane] != expected && mismatches++ < 5) {
          ADD_FAILURE() << quant_type_traits(type).name << ": x = " << values[i + lane] << " lookup " << int(codes[lane]) << ", search "
                        << int(expected);
        }
      }
    }
    EXPECT_EQ(mismatches, 0u) << values.size() << " values";
  }
}

TEST_P(SimdPaths, Cpu32bitEqualsReferenceBitForBit) {
  for (const int64_t numel : kAdamWSizes) {
    for (const int threads : {1, 2}) {
      AdamWProblem expected = random_adamw_problem(numel, 7), actual = expected;
      for (int64_t t = 1; t <= 3; ++t) {
        adamw_step_32bit_ref(expected.param.data(), expected.grad.data(), expected.state32(), numel, adamw_scalars(t));
        adamw_step_32bit(actual.param.data(), actual.grad.data(), actual.state32(), numel, adamw_scalars(t), Device::cpu(),
                         nullptr, threads);
      }
      EXPECT_TRUE(same_bits(actual.param, expected.param)) << numel << " elements, " << threads << " threads";
      EXPECT_TRUE(same_bits(actual.m, expected.m)) << numel;
      EXPECT_TRUE(same_bits(actual.v, expected.v)) << numel;
    }
  }
}

TEST_P(SimdPaths, Cpu8bitEqualsReferenceBitForBit) {
  for (const int64_t numel : kAdamWSizes) {
    AdamWProblem expected = random_adamw_problem(numel, 8), actual = expected;
    for (int64_t t = 1; t <= 3; ++t) {
      adamw_step_8bit_ref(expected.param.data(), expected.grad.data(), expected.state8(), numel, adamw_scalars(t));
      adamw_step_8bit(actual.param.data(), actual.grad.data(), actual.state8(), numel, adamw_scalars(t), Device::cpu(),
                      nullptr, 2);
    }
    EXPECT_TRUE(same_bits(actual.param, expected.param)) << numel;
    EXPECT_EQ(actual.m_codes, expected.m_codes) << numel;
    EXPECT_EQ(actual.v_codes, expected.v_codes) << numel;
    EXPECT_TRUE(same_bits(actual.m_absmax, expected.m_absmax)) << numel;
    EXPECT_TRUE(same_bits(actual.v_absmax, expected.v_absmax)) << numel;
  }
}

INSTANTIATE_TEST_SUITE_P(AdamWKernel, SimdPaths, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "simd" : "scalar"; });

TEST(AdamWKernel, ReferenceEqualsTheTextbookUpdateInFp64) {
  const int64_t numel = 5000;
  AdamWProblem problem = random_adamw_problem(numel, 9);
  std::vector<double> p(problem.param.begin(), problem.param.end()), m(problem.m.begin(), problem.m.end()),
      v(problem.v.begin(), problem.v.end());
  const double lr = 3e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, wd = 0.01, scale = 0.7;
  for (int64_t t = 1; t <= 20; ++t) {
    adamw_step_32bit_ref(problem.param.data(), problem.grad.data(), problem.state32(), numel, adamw_scalars(t));
    for (int64_t i = 0; i < numel; ++i) {
      const double g = static_cast<double>(problem.grad[i]) * scale;
      p[i] *= 1 - lr * wd;
      m[i] = beta1 * m[i] + (1 - beta1) * g;
      v[i] = beta2 * v[i] + (1 - beta2) * g * g;
      const double m_hat = m[i] / (1 - std::pow(beta1, t)), v_hat = v[i] / (1 - std::pow(beta2, t));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
  // Per step fp32 rounds p twice (decay, update: an ulp of |p| together) and the update's
  // factors (ulps relative to lr); allow twice that over 20 steps.
  double worst = 0;
  for (int64_t i = 0; i < numel; ++i) worst = std::max(worst, std::fabs(problem.param[i] - p[i]) / (std::fabs(p[i]) + lr));
  EXPECT_LT(worst, 2 * 20 * 0x1p-23) << "worst error over 20 steps, in units of |p| + lr";
}

TEST(AdamWKernel, EightBitStateTracksThe32bitState) {
  // Start both from zero state (the 8-bit zero is code 127 / code 0 with absmax 0), run 30
  // steps with fresh gradients, compare the dequantized moments.
  const int64_t numel = 4096 * 3 + 17;
  AdamWProblem exact = random_adamw_problem(numel, 10);
  std::fill(exact.m.begin(), exact.m.end(), 0.0f);
  std::fill(exact.v.begin(), exact.v.end(), 0.0f);
  AdamWProblem quantized = exact;
  std::fill(quantized.m_codes.begin(), quantized.m_codes.end(), 127);
  std::fill(quantized.v_codes.begin(), quantized.v_codes.end(), 0);
  std::fill(quantized.m_absmax.begin(), quantized.m_absmax.end(), 0.0f);
  std::fill(quantized.v_absmax.begin(), quantized.v_absmax.end(), 0.0f);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1e-2f);
  for (int64_t t = 1; t <= 30; ++t) {
    for (int64_t i = 0; i < numel; ++i) exact.grad[i] = quantized.grad[i] = normal(rng) + 1e-2f;
    adamw_step_32bit(exact.param.data(), exact.grad.data(), exact.state32(), numel, adamw_scalars(t), Device::cpu());
    adamw_step_8bit(quantized.param.data(), quantized.grad.data(), quantized.state8(), numel, adamw_scalars(t), Device::cpu());
  }
  const float* signed_map = quant_type_traits(QuantType::DYNAMIC8_SIGNED).code;
  double m_error = 0, m_norm = 0, p_error = 0, p_change = 0;
  AdamWProblem start = random_adamw_problem(numel, 10);
  for (int64_t i = 0; i < numel; ++i) {
    const double m8 = signed_map[quantized.m_codes[i]] * quantized.m_absmax[i / kAdamW8bitBlocksize];
    m_error += (m8 - exact.m[i]) * (m8 - exact.m[i]);
    m_norm += static_cast<double>(exact.m[i]) * exact.m[i];
    p_error += std::pow(quantized.param[i] - exact.param[i], 2);
    p_change += std::pow(exact.param[i] - start.param[i], 2);
  }
  EXPECT_LT(std::sqrt(m_error / m_norm), 0.02) << "relative error of the first moment";
  EXPECT_LT(std::sqrt(p_error / p_change), 0.05) << "relative error of the parameter change";
}
