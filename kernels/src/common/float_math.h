// Scalar maths the fused kernels' references and CPU paths share, written so that the AVX2
// versions in avx2_math.h can repeat the same operations in the same order: the CPU
// kernels then equal the references bit for bit (the kernels build with -ffp-contract=off,
// so a multiply-add is fused only where std::fma says so).
#pragma once

#include <cmath>
#include <cstdint>

#include "shardlora/kernels/half_float.h"

namespace shardlora::kernels {

// Sums are taken in 8 interleaved lanes (lane j adds elements j, j+8, j+16, ... in order,
// starting from +0) and the lanes combined as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)):
// the order an 8-wide SIMD register gives.
constexpr int kSumLanes = 8;

inline float combine_lanes(const float lane[kSumLanes]) {
  return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

// e^x to about 1 ulp (at most 1.02 ulp measured against double exp over [ln 2^-126,
// kExpMaxInput]): Cephes expf, x = n ln2 + r, |r| <= ln2 / 2, e^r = 1 + r + r^2 p(r) with p of
// degree 5, taken in fused multiply-adds (std::fma rounds once, as vfmadd does) and in
// Estrin's order, which needs a third fewer dependent steps than Horner's. 2^n is put in
// the exponent bits. Results below 2^-126 flush to +0; above kExpMaxInput, +inf; NaN stays NaN.
constexpr float kExpMaxInput = 88.3762626647949f;   // 127.5 ln2: above it n is 128 and 2^n is +inf
constexpr float kExpMinInput = -87.3365447505531f;  // ln(2^-126)
constexpr float kExpClampHigh = 88.5f;              // n = 128 still (not 129, which would wrap to -0)
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2High = 0.693359375f, kLn2Low = -2.12194440e-4f;
constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it leaves the rounded integer in the low mantissa bits
constexpr float kExpPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                               4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

inline float exp_approx(float x) {
  // The clamps keep a NaN (as _mm256_max_ps / min_ps do with it as their second operand).
  float clamped = kExpMinInput > x ? kExpMinInput : x;
  clamped = kExpClampHigh < clamped ? kExpClampHigh : clamped;
  const float shifted = std::fma(clamped, kLog2e, kRoundMagic);
  const float n = shifted - kRoundMagic;
  float r = std::fma(n, -kLn2High, clamped);
  r = std::fma(n, -kLn2Low, r);
  const float r2 = r * r;
  const float low = std::fma(kExpPoly[4], r, kExpPoly[5]);
  const float mid = std::fma(kExpPoly[2], r, kExpPoly[3]);
  const float high = std::fma(kExpPoly[0], r, kExpPoly[1]);
  const float p = std::fma(std::fma(high, r2, mid), r2, low);
  const float y = std::fma(p, r2, r) + 1.0f;
  // n's bits shifted into the exponent field; the magic's own bits shift out.
  const float scale = bits_float((float_bits(shifted) << 23) + (127u << 23));
  return x < kExpMinInput ? 0.0f : y * scale;
}

// silu(g) = g * sigmoid(g), sigmoid(g) = 1 / (1 + e^-g).
inline float sigmoid_approx(float g) { return 1.0f / (1.0f + exp_approx(-g)); }

}  // namespace shardlora::kernels
