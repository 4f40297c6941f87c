// float <-> bfloat16 / float16 bit conversions, round to nearest even, usable from host
// and device code. The CPU kernels and the scalar references use these; CUDA's
// __float2bfloat16_rn / __float2half_rn give the same bits, which the gpu tests check.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SHARDLORA_HOST_DEVICE __host__ __device__
#else
#define SHARDLORA_HOST_DEVICE
#endif

namespace shardlora::kernels {

SHARDLORA_HOST_DEVICE inline uint32_t float_bits(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  return bits;
}

SHARDLORA_HOST_DEVICE inline float bits_float(uint32_t bits) {
  float value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

SHARDLORA_HOST_DEVICE inline uint16_t float_to_bf16_bits(float value) {
  const uint32_t bits = float_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // quiet NaN
  const uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

SHARDLORA_HOST_DEVICE inline float bf16_bits_to_float(uint16_t bits) {
  return bits_float(static_cast<uint32_t>(bits) << 16);
}

SHARDLORA_HOST_DEVICE inline uint16_t float_to_f16_bits(float value) {
  const uint32_t bits = float_bits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;        // NaN
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;       // rounds to >= 65520: inf
  if (magnitude >= 0x38800000u) {                            // normal half
    const uint32_t mantissa_odd = (magnitude >> 13) & 1u;
    const uint32_t rounded = magnitude + 0xfffu + mantissa_odd;
    return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
  }
  if (magnitude < 0x33000000u) return sign;                  // below half the smallest subnormal
  // Subnormal half: shift the full mantissa (with its hidden bit) into place, round to even.
  const uint32_t exponent = magnitude >> 23;
  const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - exponent;                    // 14..24
  const uint32_t truncated = mantissa >> shift;
  const uint32_t remainder = mantissa & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1u);
  const uint32_t round_up = remainder > halfway || (remainder == halfway && (truncated & 1u));
  return sign | static_cast<uint16_t>(truncated + round_up);
}

SHARDLORA_HOST_DEVICE inline float f16_bits_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1fu) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  // Zero or subnormal: mantissa * 2^-24 is exact in float.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

}  // namespace shardlora::kernels
