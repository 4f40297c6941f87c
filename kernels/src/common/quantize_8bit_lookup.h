// quantize_8bit_value(map, x) for a dynamic map as two table lookups instead of a search:
// the reference's code is monotone in x, so it is fixed by thresholds, T[k] = the smallest
// float that rounds to k or above (found by bisection with the reference itself, so ties go
// as the reference sends them). Floats are ordered as integers by ordered_key(); a table over
// the top 16 bits of the key gives the code at the bottom of each of the 65536 buckets, and
// every bucket holds at most one threshold (checked when the tables are built), so
//   code(x) = first_code[bucket(x)] + (key(x) >= threshold[first_code + 1]).
// NaN is the exception: its lanes take the reference.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "common/cpu_simd.h"
#include "common/quantize_value.h"
#include "shardlora/kernels/quant_types.h"

namespace shardlora::kernels {

struct Quantize8bitLookup {
  const float* map = nullptr;
  uint8_t first_code[65536 + 3] = {};  // padded: a 32-bit gather at the last bucket stays inside
  int32_t threshold[257] = {};         // [k]: key of the smallest x with code >= k; [256] = INT32_MAX

  // Built once per map (thread-safe), for DYNAMIC8_SIGNED and DYNAMIC8_UNSIGNED.
  static const Quantize8bitLookup& for_map(QuantType type);
};

// An int32 whose order is the float order (-0 just below +0; NaNs beyond the infinities).
inline int32_t ordered_key(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits >= 0 ? bits : bits ^ 0x7fffffff;
}

// The float whose ordered_key is `key` (keys of int32 range; wider values are cut to it).
inline float from_ordered_key(int64_t key) {
  const auto k = static_cast<int32_t>(key);
  const int32_t bits = k >= 0 ? k : k ^ 0x7fffffff;
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}


// Codes of eight values through the lookup; NaN lanes through the reference.
SHARDLORA_TARGET_AVX2 inline void quantize8_avx2(const Quantize8bitLookup& lookup, __m256 x, uint8_t* out) {
  const __m256i bits = _mm256_castps_si256(x);
  const __m256i negative = _mm256_srai_epi32(bits, 31);
  const __m256i key = _mm256_xor_si256(bits, _mm256_and_si256(negative, _mm256_set1_epi32(0x7fffffff)));
  const __m256i bucket = _mm256_add_epi32(_mm256_srai_epi32(key, 16), _mm256_set1_epi32(32768));
  const __m256i first = _mm256_and_si256(
      _mm256_i32gather_epi32(reinterpret_cast<const int*>(lookup.first_code), bucket, 1), _mm256_set1_epi32(0xff));
  const __m256i next = _mm256_i32gather_epi32(lookup.threshold + 1, first, 4);
  // + 1 where key >= next, i.e. where next > key does not hold.
  const __m256i code = _mm256_sub_epi32(_mm256_add_epi32(first, _mm256_set1_epi32(1)), _mm256_and_si256(_mm256_cmpgt_epi32(next, key), _mm256_set1_epi32(1)));
  alignas(32) int32_t codes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(codes), code);
  const int nan_lanes = _mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  alignas(32) float values[8];
  if (nan_lanes) _mm256_store_ps(values, x);
  for (int lane = 0; lane < 8; ++lane) {
    out[lane] = (nan_lanes >> lane) & 1 ? quantize_8bit_value(lookup.map, values[lane]) : static_cast<uint8_t>(codes[lane]);
  }
}

}  // namespace shardlora::kernels
