// AVX2 counterparts of float_math.h and of the element conversions: the same operations in
// the same order, so a kernel's AVX2 path equals its scalar reference bit for bit. Include
// only from files whose functions carry SHARDLORA_TARGET_AVX2 and run after cpu_has_avx2().
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "common/cpu_simd.h"
#include "common/float_math.h"
#include "shardlora/kernels/dtype.h"

namespace shardlora::kernels::avx2 {

SHARDLORA_TARGET_AVX2 inline __m256 exp_approx(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(kExpMinInput), _CMP_LT_OQ);
  const __m256 clamped =
      _mm256_min_ps(_mm256_set1_ps(kExpClampHigh), _mm256_max_ps(_mm256_set1_ps(kExpMinInput), x));
  const __m256 magic = _mm256_set1_ps(kRoundMagic);
  const __m256 shifted = _mm256_fmadd_ps(clamped, _mm256_set1_ps(kLog2e), magic);
  const __m256 n = _mm256_sub_ps(shifted, magic);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2High), clamped);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Low), r);
  const __m256 r2 = _mm256_mul_ps(r, r);
  const __m256 low = _mm256_fmadd_ps(_mm256_set1_ps(kExpPoly[4]), r, _mm256_set1_ps(kExpPoly[5]));
  const __m256 mid = _mm256_fmadd_ps(_mm256_set1_ps(kExpPoly[2]), r, _mm256_set1_ps(kExpPoly[3]));
  const __m256 high = _mm256_fmadd_ps(_mm256_set1_ps(kExpPoly[0]), r, _mm256_set1_ps(kExpPoly[1]));
  const __m256 p = _mm256_fmadd_ps(_mm256_fmadd_ps(high, r2, mid), r2, low);
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0f));
  const __m256i exponent =
      _mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(shifted), 23), _mm256_set1_epi32(127 << 23));
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(y, _mm256_castsi256_ps(exponent)));
}

SHARDLORA_TARGET_AVX2 inline __m256 sigmoid_approx(__m256 g) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp_approx(_mm256_sub_ps(_mm256_setzero_ps(), g))));
}

// The lanes of an 8-lane partial sum combined in float_math.h's order.
SHARDLORA_TARGET_AVX2 inline float combine_lanes(__m256 lanes) {
  const __m128 pairs = _mm_add_ps(_mm256_castps256_ps128(lanes), _mm256_extractf128_ps(lanes, 1));  // l0+l4 .. l3+l7
  const __m128 quads = _mm_add_ps(pairs, _mm_movehl_ps(pairs, pairs));  // (l0+l4)+(l2+l6), (l1+l5)+(l3+l7)
  return _mm_cvtss_f32(_mm_add_ss(quads, _mm_movehdup_ps(quads)));
}

// 8 elements of a float dtype widened to fp32 (exact), and fp32 rounded to nearest even.
template <DType kDType>
SHARDLORA_TARGET_AVX2 inline __m256 load8(const void* src) {
  if constexpr (kDType == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(src));
  } else {
    const __m128i half = _mm_loadu_si128(static_cast<const __m128i*>(src));
    if constexpr (kDType == DType::F16) return _mm256_cvtph_ps(half);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
  }
}

template <DType kDType>
SHARDLORA_TARGET_AVX2 inline void store8(void* dst, __m256 value) {
  if constexpr (kDType == DType::F32) {
    _mm256_storeu_ps(static_cast<float*>(dst), value);
  } else if constexpr (kDType == DType::F16) {
    _mm_storeu_si128(static_cast<__m128i*>(dst), _mm256_cvtps_ph(value, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    // float_to_bf16_bits: add 0x7fff plus the lowest kept bit, keep the high half; NaN -> 0x7fc0.
    const __m256i bits = _mm256_castps_si256(value);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(value, value, _CMP_UNORD_Q));
    rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7fc0), nan);
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
    _mm_storeu_si128(static_cast<__m128i*>(dst), packed);
  }
}

// fp32 values rounded to kDType and widened back (what a cast to the dtype and back gives).
template <DType kDType>
SHARDLORA_TARGET_AVX2 inline __m256 round_to(__m256 value) {
  if constexpr (kDType == DType::F32) {
    return value;
  } else {
    alignas(16) uint16_t rounded[8];
    store8<kDType>(rounded, value);
    return load8<kDType>(rounded);
  }
}

// The first `count` (< 8) elements, the other lanes +0; and the first `count` lanes stored.
template <DType kDType>
SHARDLORA_TARGET_AVX2 inline __m256 load_partial(const void* src, int64_t count) {
  alignas(32) unsigned char buffer[32] = {};
  std::memcpy(buffer, src, static_cast<size_t>(count) * dtype_size(kDType));
  return load8<kDType>(buffer);
}

template <DType kDType>
SHARDLORA_TARGET_AVX2 inline void store_partial(void* dst, __m256 value, int64_t count) {
  alignas(32) unsigned char buffer[32];
  store8<kDType>(buffer, value);
  std::memcpy(dst, buffer, static_cast<size_t>(count) * dtype_size(kDType));
}

// Element i of a buffer of kDType, as a byte address.
template <DType kDType>
inline const void* at(const void* base, int64_t i) {
  return static_cast<const char*>(base) + i * static_cast<int64_t>(dtype_size(kDType));
}
template <DType kDType>
inline void* at(void* base, int64_t i) {
  return static_cast<char*>(base) + i * static_cast<int64_t>(dtype_size(kDType));
}

// Up to 8 elements at element index i: whole vectors when n is 8, partial ones otherwise.
template <DType kDType>
SHARDLORA_TARGET_AVX2 inline __m256 load_n(const void* base, int64_t i, int64_t n) {
  return n == 8 ? load8<kDType>(at<kDType>(base, i)) : load_partial<kDType>(at<kDType>(base, i), n);
}

template <DType kDType>
SHARDLORA_TARGET_AVX2 inline void store_n(void* base, int64_t i, int64_t n, __m256 value) {
  if (n == 8) return store8<kDType>(at<kDType>(base, i), value);
  store_partial<kDType>(at<kDType>(base, i), value, n);
}

}  // namespace shardlora::kernels::avx2
