// AVX-512 counterparts of float_math.h, sixteen lanes each the same operations as one lane of
// avx2_math.h, so that a kernel's AVX-512 path equals its scalar reference bit for bit. Include
// only from files whose functions carry SHARDLORA_TARGET_AVX512 and run after cpu_has_avx512().
#pragma once

#include <immintrin.h>

#include "common/cpu_simd.h"
#include "common/float_math.h"
#include "shardlora/kernels/dtype.h"

namespace shardlora::kernels::avx512 {

SHARDLORA_TARGET_AVX512 inline __m512 exp_approx(__m512 x) {
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpMinInput), _CMP_LT_OQ);
  const __m512 clamped = _mm512_min_ps(_mm512_set1_ps(kExpClampHigh), _mm512_max_ps(_mm512_set1_ps(kExpMinInput), x));
  const __m512 magic = _mm512_set1_ps(kRoundMagic);
  const __m512 shifted = _mm512_fmadd_ps(clamped, _mm512_set1_ps(kLog2e), magic);
  const __m512 n = _mm512_sub_ps(shifted, magic);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2High), clamped);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Low), r);
  const __m512 r2 = _mm512_mul_ps(r, r);
  const __m512 low = _mm512_fmadd_ps(_mm512_set1_ps(kExpPoly[4]), r, _mm512_set1_ps(kExpPoly[5]));
  const __m512 mid = _mm512_fmadd_ps(_mm512_set1_ps(kExpPoly[2]), r, _mm512_set1_ps(kExpPoly[3]));
  const __m512 high = _mm512_fmadd_ps(_mm512_set1_ps(kExpPoly[0]), r, _mm512_set1_ps(kExpPoly[1]));
  const __m512 p = _mm512_fmadd_ps(_mm512_fmadd_ps(high, r2, mid), r2, low);
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0f));
  const __m512i exponent =
      _mm512_add_epi32(_mm512_slli_epi32(_mm512_castps_si512(shifted), 23), _mm512_set1_epi32(127 << 23));
  return _mm512_maskz_mul_ps(static_cast<__mmask16>(~underflow), y, _mm512_castsi512_ps(exponent));
}

// 16 elements of a float dtype widened to fp32 (exact).
template <DType kDType>
SHARDLORA_TARGET_AVX512 inline __m512 load16(const void* src) {
  if constexpr (kDType == DType::F32) {
    return _mm512_loadu_ps(src);
  } else {
    const __m256i half = _mm256_loadu_si256(static_cast<const __m256i*>(src));
    if constexpr (kDType == DType::F16) return _mm512_cvtph_ps(half);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
  }
}

// An 8-lane partial sum plus 16 values in float_math.h's lane order: element i goes to lane
// i % 8, the first eight before the last.
SHARDLORA_TARGET_AVX512 inline __m256 add_to_lanes(__m256 lanes, __m512 values) {
  lanes = _mm256_add_ps(lanes, _mm512_castps512_ps256(values));
  return _mm256_add_ps(lanes, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(values), 1)));
}

}  // namespace shardlora::kernels::avx512
