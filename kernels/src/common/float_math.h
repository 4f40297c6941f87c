// Scalar maths the fused kernels' references and CPU paths share, written so that the AVX2
// versions in avx2_math.h can repeat the same operations in the same order: the CPU
// kernels then equal the references bit for bit (no fma: the kernels build with
// -ffp-contract=off).
#pragma once

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

// e^x to about 2 ulp (Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-5 polynomial in
// r, scaled by 2^n built in the exponent bits). Results below 2^-126 flush to +0; above
// the float range, +inf.
constexpr float kExpMaxInput = 88.3762626647949f;
constexpr float kExpMinInput = -87.3365447505531f;  // ln(2^-126)
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2High = 0.693359375f, kLn2Low = -2.12194440e-4f;
constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting rounds to an integer
constexpr float kExpPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                               4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

inline float exp_approx(float x) {
  if (!(x <= kExpMaxInput)) return x != x ? x : bits_float(0x7f800000u);
  if (x < kExpMinInput) return 0.0f;
  const float n = (x * kLog2e + kRoundMagic) - kRoundMagic;
  float r = x - n * kLn2High;
  r = r - n * kLn2Low;
  float p = kExpPoly[0];
  for (int i = 1; i < 6; ++i) p = p * r + kExpPoly[i];
  const float y = (p * (r * r) + r) + 1.0f;
  return y * bits_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
}

// silu(g) = g * sigmoid(g), sigmoid(g) = 1 / (1 + e^-g).
inline float sigmoid_approx(float g) { return 1.0f / (1.0f + exp_approx(-g)); }

}  // namespace shardlora::kernels
