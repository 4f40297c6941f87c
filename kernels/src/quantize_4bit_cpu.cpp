// quantize_4bit on the CPU: OpenMP threads over blocks. Each block is widened to fp32 once,
// its absmax found as an integer max over |x| bit patterns (for non-NaN floats the same
// order; NaN is skipped as std::max / fmaxf skip it, and patterns >= 0x7f800000 flag the
// block as non-finite), then codes are the count of pivots exceeded, packed in pairs. With
// AVX2 every whole block of finite values does this eight at a time (the codes sixteen at a
// time with AVX-512; blocksizes are powers of two >= 32); the scalar loop takes the rest.
// Same fp32 products and comparisons as the reference: identical bytes.
// GCC 12's AVX-512 intrinsics warn about their own _mm512_undefined_* (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cmath>

#include "common/avx2_math.h"
#include "common/avx512_math.h"
#include "common/load_element.h"
#include "common/quantize_value.h"
#include "quantize_4bit_impl.h"

namespace shardlora::kernels {
namespace {

constexpr int64_t kMaxBlocksize = 4096;

// Packs codes in pairs, high nibble first; an odd tail pairs with zero_code.
void pack_pairs(uint8_t* codes, int64_t count, uint8_t zero_code, uint8_t* dst) {
  codes[count] = zero_code;
  for (int64_t j = 0; j < (count + 1) / 2; ++j) dst[j] = static_cast<uint8_t>(codes[2 * j] << 4 | codes[2 * j + 1]);
}

template <QuantType kType>
SHARDLORA_TARGET_AVX2 __m256i codes8_avx2(__m256 x) {
  if constexpr (kType == QuantType::NF4) {
    constexpr float pivots[] = {SHARDLORA_NF4_PIVOTS};
    __m256i code = _mm256_setzero_si256();
    for (const float pivot : pivots) code = _mm256_sub_epi32(code, _mm256_castps_si256(_mm256_cmp_ps(x, _mm256_set1_ps(pivot), _CMP_GT_OQ)));
    return code;
  } else {
    constexpr float pivots[] = {SHARDLORA_FP4_MAGNITUDE_PIVOTS};
    const __m256 magnitude = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
    __m256i rank = _mm256_setzero_si256();
    for (const float pivot : pivots) {
      rank = _mm256_sub_epi32(rank, _mm256_castps_si256(_mm256_cmp_ps(magnitude, _mm256_set1_ps(pivot), _CMP_GT_OQ)));
    }
    const __m256i nibble = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(kFp4CodesByMagnitude)),
                                                              _mm256_slli_epi32(rank, 2)),
                                            _mm256_set1_epi32(0xf));
    const __m256i sign = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ)), _mm256_set1_epi32(0b1000));
    return _mm256_or_si256(nibble, sign);
  }
}

// Codes of `count` (a multiple of 16) values times scale, sixteen at a time with AVX-512:
// NF4 by a branchless binary search over the 15 pivots (one 16-entry permute per step, +inf
// past the last), FP4 by mask compares. The same products and the same code as counting
// the pivots exceeded.
template <DType kIn, QuantType kType>
SHARDLORA_TARGET_AVX512 void codes_avx512(const typename InputElement<kIn>::type* src, int64_t count, float scale, uint8_t* codes) {
  const __m512 s = _mm512_set1_ps(scale);
  constexpr float nf4_pivots[16] = {SHARDLORA_NF4_PIVOTS, __builtin_inff()};
  const __m512 table = _mm512_loadu_ps(nf4_pivots);
  for (int64_t i = 0; i < count; i += 16) {
    const __m512 x = _mm512_mul_ps(avx512::load16<kIn>(src + i), s);
    __m512i code = _mm512_setzero_si512();
    if constexpr (kType == QuantType::NF4) {
      for (int step = 8; step > 0; step /= 2) {
        const __m512 pivot = _mm512_permutexvar_ps(_mm512_add_epi32(code, _mm512_set1_epi32(step - 1)), table);
        code = _mm512_mask_add_epi32(code, _mm512_cmp_ps_mask(x, pivot, _CMP_GT_OQ), code, _mm512_set1_epi32(step));
      }
    } else {
      constexpr float pivots[] = {SHARDLORA_FP4_MAGNITUDE_PIVOTS};
      const __m512 magnitude = _mm512_abs_ps(x);
      for (const float pivot : pivots) {
        code = _mm512_mask_add_epi32(code, _mm512_cmp_ps_mask(magnitude, _mm512_set1_ps(pivot), _CMP_GT_OQ), code,
                                     _mm512_set1_epi32(1));
      }
      const __m512i nibble = _mm512_and_si512(
          _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(kFp4CodesByMagnitude)), _mm512_slli_epi32(code, 2)), _mm512_set1_epi32(0xf));
      code = _mm512_mask_or_epi32(nibble, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), nibble, _mm512_set1_epi32(0b1000));
    }
    _mm_store_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtepi32_epi8(code));
  }
}

// The largest |x| of a block as fp32 bits, NaN skipped; 0x7f800000 or more when the block
// holds an infinity or NaN. 16-bit inputs compare their own sign-magnitude bits (the same
// order), sixteen at a time.
template <DType kIn>
SHARDLORA_TARGET_AVX2 uint32_t block_max_bits(const typename InputElement<kIn>::type* src, int64_t count) {
  if constexpr (kIn == DType::F32) {
    __m256i max_bits = _mm256_setzero_si256();
    for (int64_t i = 0; i < count; i += 8) {
      max_bits = _mm256_max_epu32(max_bits, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)),
                                                             _mm256_set1_epi32(0x7fffffff)));
    }
    max_bits = _mm256_max_epu32(max_bits, _mm256_permute2x128_si256(max_bits, max_bits, 1));
    max_bits = _mm256_max_epu32(max_bits, _mm256_shuffle_epi32(max_bits, _MM_SHUFFLE(1, 0, 3, 2)));
    max_bits = _mm256_max_epu32(max_bits, _mm256_shuffle_epi32(max_bits, _MM_SHUFFLE(2, 3, 0, 1)));
    return static_cast<uint32_t>(_mm256_cvtsi256_si32(max_bits));
  } else {
    __m256i max_bits = _mm256_setzero_si256();
    for (int64_t i = 0; i < count; i += 16) {
      max_bits = _mm256_max_epu16(max_bits, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)),
                                                             _mm256_set1_epi16(0x7fff)));
    }
    __m128i max8 = _mm_max_epu16(_mm256_castsi256_si128(max_bits), _mm256_extracti128_si256(max_bits, 1));
    max8 = _mm_max_epu16(max8, _mm_srli_si128(max8, 8));
    max8 = _mm_max_epu16(max8, _mm_srli_si128(max8, 4));
    max8 = _mm_max_epu16(max8, _mm_srli_si128(max8, 2));
    const auto largest = static_cast<uint16_t>(_mm_cvtsi128_si32(max8));
    const uint16_t infinity = kIn == DType::F16 ? 0x7c00 : 0x7f80;
    return largest >= infinity ? 0x7f800000u : float_bits(InputElement<kIn>::to_float(largest));
  }
}

// A whole block (count a multiple of 16) of finite values: the scalar loop's products and
// comparisons, eight (AVX2) or sixteen (AVX-512) at a time, pairs packed sixteen codes at a
// time. Returns false, having written nothing, when the block holds an infinity or NaN (the
// scalar loop handles those).
template <DType kIn, QuantType kType>
SHARDLORA_TARGET_AVX2 bool quantize_finite_block_avx2(const typename InputElement<kIn>::type* src, int64_t count, float* absmax,
                                                      uint8_t* dst, bool avx512) {
  alignas(64) uint8_t codes[kMaxBlocksize];
  const uint32_t block_max = block_max_bits<kIn>(src, count);
  if (block_max >= 0x7f800000u) return false;
  const float block_absmax = bits_float(block_max);
  *absmax = block_absmax;
  const float block_scale = reciprocal_scale(block_absmax);
  if (avx512) {
    codes_avx512<kIn, kType>(src, count, block_scale, codes);
  } else {
    const __m256 scale = _mm256_set1_ps(block_scale);
    for (int64_t i = 0; i < count; i += 8) {
      const __m256i code = codes8_avx2<kType>(_mm256_mul_ps(avx2::load8<kIn>(src + i), scale));
      const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + i), _mm_packus_epi16(words, words));
    }
  }
  // Byte pairs (even code, odd code) read as little-endian 16-bit words: even << 4 | odd.
  for (int64_t i = 0; i < count; i += 16) {
    const __m128i pairs = _mm_load_si128(reinterpret_cast<const __m128i*>(codes + i));
    const __m128i packed = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(pairs, _mm_set1_epi16(0xff)), 4), _mm_srli_epi16(pairs, 8));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + i / 2), _mm_packus_epi16(packed, packed));
  }
  return true;
}

template <DType kIn, QuantType kType>
void quantize_blocks(const typename InputElement<kIn>::type* x, const Quantized4bit& out, uint8_t zero_code) {
  using Element = InputElement<kIn>;
  const int64_t blocks = (out.numel + out.blocksize - 1) / out.blocksize;
  const bool simd = cpu_has_avx2(), avx512 = cpu_has_avx512();
#pragma omp parallel for schedule(static)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t first = block * out.blocksize;
    const int64_t count = std::min(out.blocksize, out.numel - first);
    const auto* src = x + first;
    if (simd && count == out.blocksize &&
        quantize_finite_block_avx2<kIn, kType>(src, count, out.absmax + block, out.codes + first / 2, avx512)) {
      continue;
    }
    alignas(64) float values[kMaxBlocksize];
    alignas(64) uint8_t codes[kMaxBlocksize + 1];
    uint32_t max_bits = 0, nonfinite = 0;
    for (int64_t i = 0; i < count; ++i) {
      values[i] = Element::to_float(src[i]);
      const uint32_t magnitude = float_bits(values[i]) & 0x7fffffffu;
      nonfinite |= magnitude >= 0x7f800000u;
      max_bits = std::max(max_bits, magnitude > 0x7f800000u ? 0u : magnitude);
    }
    const float absmax = bits_float(max_bits);
    out.absmax[block] = nonfinite ? NAN : absmax;
    const float scale = reciprocal_scale(absmax);
    for (int64_t i = 0; i < count; ++i) codes[i] = quantize_4bit_value(kType, values[i] * scale);
    pack_pairs(codes, count, zero_code, out.codes + first / 2);
  }
}

}  // namespace

void quantize_4bit_cpu(const void* input, DType input_dtype, const Quantized4bit& out) {
  const uint8_t zero_code = quant_type_traits(out.type).zero_code;
  dispatch_float_dtype(input_dtype, [&](auto tag) {
    constexpr DType kIn = decltype(tag)::value;
    const auto* x = static_cast<const typename InputElement<kIn>::type*>(input);
    if (out.type == QuantType::NF4) {
      quantize_blocks<kIn, QuantType::NF4>(x, out, zero_code);
    } else {
      quantize_blocks<kIn, QuantType::FP4>(x, out, zero_code);
    }
  });
}

}  // namespace shardlora::kernels
