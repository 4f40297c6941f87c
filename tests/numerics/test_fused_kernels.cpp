// The fused kernels (RMSNorm, RoPE, SwiGLU, row cross-entropy): the references against
// fp64 definitions, and the CPU kernels (AVX2 and scalar paths) against the references bit
// for bit, for fp32, fp16 and bf16 and row lengths around the SIMD width. exp_approx, which
// SwiGLU and the loss take, white box: its error against double exp over a sweep of floats,
// and its AVX2 form against the scalar one bit for bit.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "common/avx2_math.h"
#include "common/float_math.h"
#include "numerics/fused_op_cases.h"
#include "shardlora/kernels/cpu_features.h"
#include "tolerances.h"

using namespace shardlora::kernels;
using namespace shardlora::testing;

namespace {

// |actual - expected| <= rel * |expected| + abs, element by element.
void expect_close(const std::vector<double>& actual, const std::vector<double>& expected, double rel, double abs,
                  const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (size_t i = 0; i < actual.size(); ++i) {
    ASSERT_NEAR(actual[i], expected[i], rel * std::abs(expected[i]) + abs) << what << " at " << i;
  }
}

TEST(FusedMath, RmsNormReferenceIsTheFp64Definition) {
  const int64_t rows = 5, cols = 100;
  const auto x = scaled_normal_values(rows * cols, 3.0f, 1), w = scaled_normal_values(cols, 1.0f, 2);
  for (const DType dtype : kFloatDTypes) {
    const auto xb = encode(x, dtype), wb = encode(w, dtype);
    const auto x64 = decoded(xb, dtype, rows * cols), w64 = decoded(wb, dtype, cols);
    std::vector<uint8_t> y(xb.size());
    std::vector<float> inv_rms(rows);
    rms_norm_forward_ref(xb.data(), wb.data(), y.data(), inv_rms.data(), {rows, cols}, 1e-5f, dtype);
    const auto dy = encode(scaled_normal_values(rows * cols, 1.0f, 3), dtype);
    const auto dy64 = decoded(dy, dtype, rows * cols);
    std::vector<uint8_t> dx(xb.size());
    std::vector<float> dw(cols);
    rms_norm_backward_ref(dy.data(), xb.data(), wb.data(), inv_rms.data(), dx.data(), dw.data(), {rows, cols}, dtype);
    std::vector<double> y64(rows * cols), dx64(rows * cols), dw64(cols, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      double squares = 0, dot = 0;
      for (int64_t c = 0; c < cols; ++c) squares += x64[r * cols + c] * x64[r * cols + c];
      const double inv = 1.0 / std::sqrt(squares / cols + 1e-5);
      for (int64_t c = 0; c < cols; ++c) dot += dy64[r * cols + c] * w64[c] * x64[r * cols + c] * inv;
      for (int64_t c = 0; c < cols; ++c) {
        const double n = x64[r * cols + c] * inv;
        y64[r * cols + c] = w64[c] * n;
        dx64[r * cols + c] = inv * (dy64[r * cols + c] * w64[c] - n * dot / cols);
        dw64[c] += dy64[r * cols + c] * n;
      }
    }
    const double u = unit_roundoff(dtype);
    expect_close(decoded(y, dtype, rows * cols), y64, 3 * u + 1e-6, 1e-6, "y");
    expect_close(decoded(dx, dtype, rows * cols), dx64, u + 1e-5, 1e-4 + 8 * u, "dx");
    expect_close(std::vector<double>(dw.begin(), dw.end()), dw64, 2 * u + 1e-5, 2 * u * rows, "dw");
  }
}

TEST(FusedMath, SwigluReferenceIsTheFp64Definition) {
  const int64_t count = 4000;
  const auto g = scaled_normal_values(count, 4.0f, 4), up = scaled_normal_values(count, 1.0f, 5);
  const auto dy = scaled_normal_values(count, 1.0f, 6);
  std::vector<float> y(count), dg(count), du(count);
  swiglu_forward_ref(g.data(), up.data(), y.data(), count, DType::F32);
  swiglu_backward_ref(dy.data(), g.data(), up.data(), dg.data(), du.data(), count, DType::F32);
  for (int64_t i = 0; i < count; ++i) {
    const double s = sigmoid64(g[i]);
    ASSERT_NEAR(y[i], silu64(g[i]) * up[i], 1e-6 * (1 + std::abs(y[i]))) << i;
    ASSERT_NEAR(du[i], dy[i] * silu64(g[i]), 1e-6 * (1 + std::abs(du[i]))) << i;
    ASSERT_NEAR(dg[i], dy[i] * up[i] * s * (1 + g[i] * (1 - s)), 1e-6 * (1 + std::abs(dg[i]))) << i;
  }
}

TEST(FusedMath, ExpApproximationThroughSwigluStaysWithinUlps) {
  // silu(g) * 1 at g = -x for very negative x is ~ -x e^x: the tails of exp_approx.
  const std::vector<float> g = {-87.0f, -80.0f, -30.0f, 0.0f, 30.0f, 88.0f, 100.0f, -100.0f,
                                std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  const std::vector<float> up(g.size(), 1.0f);
  std::vector<float> y(g.size());
  swiglu_forward_ref(g.data(), up.data(), y.data(), static_cast<int64_t>(g.size()), DType::F32);
  for (size_t i = 0; i + 2 < g.size(); ++i) {
    const double expected = silu64(g[i]);
    EXPECT_NEAR(y[i], expected, 4 * 0x1p-24 * std::abs(expected) + 1e-37) << g[i];
  }
  EXPECT_EQ(y[g.size() - 2], std::numeric_limits<float>::infinity());  // silu(inf) = inf
  EXPECT_TRUE(std::isnan(y[g.size() - 1]));                           // -inf * 0, as torch gives
}

// Every 251st float (the step varies the low bits) with e^x in the normal range, both signs.
std::vector<float> exp_sweep() {
  std::vector<float> xs;
  for (const uint32_t sign : {0u, 0x80000000u}) {
    for (uint32_t bits = 0; bits < 0x7f800000u; bits += 251) {
      const float x = bits_float(bits | sign);
      if (x >= kExpMinInput && x <= kExpMaxInput) xs.push_back(x);
    }
  }
  return xs;
}

const std::vector<float> kExpSpecials = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                                         -std::numeric_limits<float>::infinity(), 88.4f, 88.72f, 89.0f, 1e30f,
                                         -87.34f, -88.0f, -104.0f, -1e30f, 0.0f, -0.0f, kExpMaxInput, kExpMinInput};

TEST(FusedMath, ExpApproximationIsWithinAnUlpOfExp) {
  double worst = 0;
  float worst_at = 0;
  for (const float x : exp_sweep()) {
    const double expected = std::exp(static_cast<double>(x));
    int exponent = 0;
    std::frexp(expected, &exponent);
    const double ulps = std::abs(exp_approx(x) - expected) / std::ldexp(1.0, exponent - 24);
    if (ulps > worst) worst = ulps, worst_at = x;
  }
  EXPECT_LE(worst, 1.05) << "at x = " << worst_at;  // 1.02 measured over every 256th float
  EXPECT_TRUE(std::isnan(exp_approx(std::numeric_limits<float>::quiet_NaN())));
  for (const float x : {88.4f, 88.72f, 89.0f, 1e30f, std::numeric_limits<float>::infinity()}) {
    EXPECT_EQ(exp_approx(x), std::numeric_limits<float>::infinity()) << x;
  }
  for (const float x : {-87.34f, -88.0f, -104.0f, -1e30f, -std::numeric_limits<float>::infinity()}) {
    EXPECT_EQ(float_bits(exp_approx(x)), 0u) << x;  // +0
  }
  EXPECT_EQ(exp_approx(0.0f), 1.0f);
  EXPECT_EQ(exp_approx(-0.0f), 1.0f);
}

SHARDLORA_TARGET_AVX2 std::vector<uint32_t> avx2_exp_bits(const std::vector<float>& xs) {
  std::vector<float> padded = xs;
  padded.resize((xs.size() + 7) / 8 * 8, 0.0f);
  std::vector<uint32_t> bits(padded.size());
  for (size_t i = 0; i < padded.size(); i += 8) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(bits.data() + i),
                        _mm256_castps_si256(avx2::exp_approx(_mm256_loadu_ps(padded.data() + i))));
  }
  bits.resize(xs.size());
  return bits;
}

TEST(FusedMath, ExpApproximationAvx2EqualsScalarBitForBit) {
  if (!cpu_has_avx2()) GTEST_SKIP() << "no AVX2 and FMA on this CPU";
  std::vector<float> xs = exp_sweep();
  xs.insert(xs.end(), kExpSpecials.begin(), kExpSpecials.end());
  const std::vector<uint32_t> simd = avx2_exp_bits(xs);
  for (size_t i = 0; i < xs.size(); ++i) ASSERT_EQ(simd[i], float_bits(exp_approx(xs[i]))) << "x = " << xs[i];
}

TEST(FusedMath, RopeReferenceIsTheFp64RotationAndBackwardItsInverse) {
  const RopeShape shape{3, 2, 14};
  const int64_t count = shape.tokens * shape.heads * shape.head_dim, half = shape.head_dim / 2;
  std::vector<float> angles = scaled_normal_values(shape.tokens * half, 2.0f, 7), cos(angles.size()), sin(angles.size());
  for (size_t i = 0; i < angles.size(); ++i) cos[i] = std::cos(angles[i]), sin[i] = std::sin(angles[i]);
  const auto x = scaled_normal_values(count, 1.0f, 8);
  std::vector<float> rotated = x;
  rope_apply_ref(rotated.data(), cos.data(), sin.data(), shape, RopeDirection::Forward, DType::F32);
  for (int64_t t = 0; t < shape.tokens; ++t) {
    for (int64_t h = 0; h < shape.heads; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        const int64_t a = (t * shape.heads + h) * shape.head_dim + i, b = a + half;
        const double c = cos[t * half + i], s = sin[t * half + i];
        EXPECT_NEAR(rotated[a], x[a] * c - double(x[b]) * s, 1e-6);
        EXPECT_NEAR(rotated[b], x[b] * c + double(x[a]) * s, 1e-6);
      }
    }
  }
  rope_apply_ref(rotated.data(), cos.data(), sin.data(), shape, RopeDirection::Backward, DType::F32);
  for (int64_t i = 0; i < count; ++i) EXPECT_NEAR(rotated[i], x[i], 1e-6) << i;  // a rotation's transpose undoes it
}

TEST(FusedMath, CrossEntropyReferenceIsTheFp64SoftmaxLoss) {
  const int64_t rows = 6, vocab = 1000;
  const auto [logits, targets] = cross_entropy_case(rows, vocab, 4.0f, 9);
  std::vector<float> z = logits, losses(rows);
  cross_entropy_rows_ref(z.data(), targets.data(), losses.data(), {rows, vocab}, -100, true, DType::F32);
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] == -100) {
      EXPECT_EQ(losses[r], 0.0f);
      for (int64_t c = 0; c < vocab; ++c) ASSERT_EQ(z[r * vocab + c], 0.0f);
      continue;
    }
    if (targets[r] >= vocab) {
      EXPECT_TRUE(std::isnan(losses[r]));
      EXPECT_TRUE(std::isnan(z[r * vocab]));
      continue;
    }
    double m = -1e300, sum = 0;
    for (int64_t c = 0; c < vocab; ++c) m = std::max(m, double(logits[r * vocab + c]));
    for (int64_t c = 0; c < vocab; ++c) sum += std::exp(logits[r * vocab + c] - m);
    EXPECT_NEAR(losses[r], m + std::log(sum) - logits[r * vocab + targets[r]], 1e-5) << r;
    for (int64_t c = 0; c < vocab; ++c) {
      const double p = std::exp(logits[r * vocab + c] - m) / sum - (c == targets[r] ? 1.0 : 0.0);
      ASSERT_NEAR(z[r * vocab + c], p, 1e-6 * std::abs(p) + 1e-9) << r << " " << c;
    }
  }
  std::vector<float> untouched = logits;
  cross_entropy_rows_ref(untouched.data(), targets.data(), losses.data(), {rows, vocab}, -100, false, DType::F32);
  EXPECT_EQ(untouched, logits);
}

// CPU kernels against the references on each path: scalar, AVX2 (AVX-512 turned off), and
// the best this CPU has.
enum class SimdPath { Scalar, Avx2, Best };

class FusedCpu : public ::testing::TestWithParam<SimdPath> {
 protected:
  void SetUp() override {
    set_cpu_simd_enabled(GetParam() != SimdPath::Scalar);
    set_cpu_avx512_enabled(GetParam() == SimdPath::Best);
  }
  void TearDown() override {
    set_cpu_simd_enabled(true);
    set_cpu_avx512_enabled(true);
  }
};

TEST_P(FusedCpu, RmsNormEqualsReference) {
  for (const int64_t cols : kFusedRowLengths) {
    const int64_t rows = 37;
    for (const DType dtype : kFloatDTypes) {
      const auto x = encode(scaled_normal_values(rows * cols, 2.0f, 11), dtype);
      const auto w = encode(scaled_normal_values(cols, 1.0f, 12), dtype);
      const auto dy = encode(scaled_normal_values(rows * cols, 1.0f, 13), dtype);
      std::vector<uint8_t> y_ref(x.size()), y_cpu(x.size()), dx_ref(x.size()), dx_cpu(x.size());
      std::vector<float> inv_ref(rows), inv_cpu(rows), dw_ref(cols), dw_cpu(cols);
      rms_norm_forward_ref(x.data(), w.data(), y_ref.data(), inv_ref.data(), {rows, cols}, 1e-6f, dtype);
      rms_norm_forward(x.data(), w.data(), y_cpu.data(), inv_cpu.data(), {rows, cols}, 1e-6f, dtype, Device::cpu());
      EXPECT_EQ(y_cpu, y_ref) << cols << " " << dtype_name(dtype);
      EXPECT_EQ(0, std::memcmp(inv_cpu.data(), inv_ref.data(), rows * sizeof(float))) << cols;
      rms_norm_backward_ref(dy.data(), x.data(), w.data(), inv_ref.data(), dx_ref.data(), dw_ref.data(), {rows, cols}, dtype);
      rms_norm_backward(dy.data(), x.data(), w.data(), inv_ref.data(), dx_cpu.data(), dw_cpu.data(), {rows, cols}, dtype,
                        Device::cpu());
      EXPECT_EQ(dx_cpu, dx_ref) << cols << " " << dtype_name(dtype);
      EXPECT_EQ(0, std::memcmp(dw_cpu.data(), dw_ref.data(), cols * sizeof(float))) << cols << " " << dtype_name(dtype);
    }
  }
}

TEST_P(FusedCpu, SwigluEqualsReference) {
  for (const int64_t count : {int64_t{1}, int64_t{7}, int64_t{8}, int64_t{4097}, int64_t{20001}}) {
    for (const DType dtype : kFloatDTypes) {
      auto gate_values = scaled_normal_values(count, 5.0f, 14);
      gate_values[0] = -95.0f;  // past exp's underflow
      const auto g = encode(gate_values, dtype), u = encode(scaled_normal_values(count, 1.0f, 15), dtype);
      const auto dy = encode(scaled_normal_values(count, 1.0f, 16), dtype);
      std::vector<uint8_t> y_ref(g.size()), y_cpu(g.size()), dg_ref(g.size()), du_ref(g.size());
      swiglu_forward_ref(g.data(), u.data(), y_ref.data(), count, dtype);
      swiglu_forward(g.data(), u.data(), y_cpu.data(), count, dtype, Device::cpu());
      EXPECT_EQ(y_cpu, y_ref) << count << " " << dtype_name(dtype);
      swiglu_backward_ref(dy.data(), g.data(), u.data(), dg_ref.data(), du_ref.data(), count, dtype);
      std::vector<uint8_t> dg_cpu = g, du_cpu = u;  // in place over gate and up
      swiglu_backward(dy.data(), dg_cpu.data(), du_cpu.data(), dg_cpu.data(), du_cpu.data(), count, dtype, Device::cpu());
      EXPECT_EQ(dg_cpu, dg_ref) << count << " " << dtype_name(dtype);
      EXPECT_EQ(du_cpu, du_ref) << count << " " << dtype_name(dtype);
    }
  }
}

TEST_P(FusedCpu, RopeEqualsReference) {
  for (const int64_t head_dim : {int64_t{2}, int64_t{14}, int64_t{16}, int64_t{64}, int64_t{128}}) {
    const RopeShape shape{19, 3, head_dim};
    const int64_t count = shape.tokens * shape.heads * head_dim, half = head_dim / 2;
    for (const DType dtype : kFloatDTypes) {
      const auto cos = encode(scaled_normal_values(shape.tokens * half, 1.0f, 17), dtype);
      const auto sin = encode(scaled_normal_values(shape.tokens * half, 1.0f, 18), dtype);
      const auto x = encode(scaled_normal_values(count, 1.0f, 19), dtype);
      for (const RopeDirection direction : {RopeDirection::Forward, RopeDirection::Backward}) {
        std::vector<uint8_t> expected = x, actual = x;
        rope_apply_ref(expected.data(), cos.data(), sin.data(), shape, direction, dtype);
        rope_apply(actual.data(), cos.data(), sin.data(), shape, direction, dtype, Device::cpu());
        EXPECT_EQ(actual, expected) << head_dim << " " << dtype_name(dtype);
      }
    }
  }
}

TEST_P(FusedCpu, CrossEntropyEqualsReference) {
  // Shorter than a group of 64; whole groups (64, 128); whole groups and then a shorter one
  // of eights (1000), of a part of one (32771, 65) or of both (29 + 64).
  for (const int64_t vocab : {int64_t{1}, int64_t{7}, int64_t{8}, int64_t{13}, int64_t{29}, int64_t{64}, int64_t{65},
                              int64_t{93}, int64_t{128}, int64_t{1000}, int64_t{32771}}) {
    const int64_t rows = 11;
    const auto [values, targets] = cross_entropy_case(rows, vocab, 6.0f, 20);
    for (const DType dtype : kFloatDTypes) {
      const auto logits = encode(values, dtype);
      for (const bool gradient : {true, false}) {
        std::vector<uint8_t> expected = logits, actual = logits;
        std::vector<float> loss_ref(rows), loss_cpu(rows);
        cross_entropy_rows_ref(expected.data(), targets.data(), loss_ref.data(), {rows, vocab}, -100, gradient, dtype);
        cross_entropy_rows(actual.data(), targets.data(), loss_cpu.data(), {rows, vocab}, -100, gradient, dtype,
                           Device::cpu());
        EXPECT_EQ(actual, expected) << vocab << " " << dtype_name(dtype);
        EXPECT_EQ(0, std::memcmp(loss_cpu.data(), loss_ref.data(), rows * sizeof(float))) << vocab << " " << dtype_name(dtype);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, FusedCpu, ::testing::Values(SimdPath::Scalar, SimdPath::Avx2, SimdPath::Best),
                         [](const auto& info) {
                           return std::string(info.param == SimdPath::Scalar ? "scalar" : info.param == SimdPath::Avx2 ? "avx2" : "best");
                         });

TEST(FusedKernels, RejectBadArguments) {
  float x[4] = {1, 2, 3, 4}, inv[2];
  EXPECT_THROW(rms_norm_forward(x, x, x, inv, {2, 0}, 1e-6f, DType::F32, Device::cpu()), shardlora::Error);
  EXPECT_THROW(rms_norm_forward(x, x, x, inv, {2, 2}, -1.0f, DType::F32, Device::cpu()), shardlora::Error);
  EXPECT_THROW(rms_norm_forward(x, nullptr, x, inv, {2, 2}, 1e-6f, DType::F32, Device::cpu()), shardlora::Error);
  EXPECT_THROW(rope_apply(x, x, x, {1, 1, 3}, RopeDirection::Forward, DType::F32, Device::cpu()), shardlora::Error);
  EXPECT_THROW(swiglu_forward(x, x, x, 4, DType::U8, Device::cpu()), shardlora::Error);
  const int64_t target = 0;
  EXPECT_THROW(cross_entropy_rows(x, &target, inv, {1, 4}, -100, true, DType::U8, Device::cpu()), shardlora::Error);
}

}  // namespace
