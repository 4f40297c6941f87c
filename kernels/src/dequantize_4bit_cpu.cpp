// dequantize_4bit on the CPU: OpenMP threads over quantization blocks. Per block the 16
// code values are scaled once (the same fp32 products and rounding as the reference, so
// results are bit-identical), then:
//   sse4.1: the table is split into byte planes and pshufb looks up 16 nibbles at a time;
//   scalar: each byte yields two table lookups.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "common/cpu_simd.h"
#include "common/store_element.h"
#include "dequantize_4bit_impl.h"

namespace shardlora::kernels {
namespace {

template <typename Out>
void expand_block_scalar(const Out* lut, const uint8_t* src, int64_t count, Out* dst) {
  const int64_t pairs = count / 2;
  for (int64_t j = 0; j < pairs; ++j) {
    dst[2 * j] = lut[src[j] >> 4];
    dst[2 * j + 1] = lut[src[j] & 0x0f];
  }
  if (count % 2) dst[count - 1] = lut[src[pairs] >> 4];
}

// Element order of 16 code bytes: (high nibble, low nibble) of byte 0, of byte 1, ...
SHARDLORA_TARGET_SSE41 inline void nibble_indices(const uint8_t* src, __m128i* first16, __m128i* next16) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
  const __m128i low_mask = _mm_set1_epi8(0x0f);
  const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_mask);
  const __m128i low = _mm_and_si128(bytes, low_mask);
  *first16 = _mm_unpacklo_epi8(high, low);
  *next16 = _mm_unpackhi_epi8(high, low);
}

// 16-bit outputs: planes[0] holds the low byte of each of the 16 table entries, planes[1]
// the high byte.
SHARDLORA_TARGET_SSE41 void expand_block_sse41(const uint16_t* lut, const uint8_t* src, int64_t count, uint16_t* dst) {
  const __m128i to_planes = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m128i a = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lut)), to_planes);
  const __m128i b = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lut + 8)), to_planes);
  const __m128i low_plane = _mm_unpacklo_epi64(a, b), high_plane = _mm_unpackhi_epi64(a, b);
  int64_t done = 0;
  for (; done + 32 <= count; done += 32) {
    __m128i indices[2];
    nibble_indices(src + done / 2, &indices[0], &indices[1]);
    for (int half = 0; half < 2; ++half) {
      const __m128i low = _mm_shuffle_epi8(low_plane, indices[half]);
      const __m128i high = _mm_shuffle_epi8(high_plane, indices[half]);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + done + 16 * half), _mm_unpacklo_epi8(low, high));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + done + 16 * half + 8), _mm_unpackhi_epi8(low, high));
    }
  }
  expand_block_scalar(lut, src + done / 2, count - done, dst + done);
}

// fp32 outputs: four byte planes, one per byte of the 16 table entries.
SHARDLORA_TARGET_SSE41 void expand_block_sse41(const float* lut, const uint8_t* src, int64_t count, float* dst) {
  const __m128i gather = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m128 t[4];
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm_castsi128_ps(_mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lut + 4 * i)), gather));
  }
  _MM_TRANSPOSE4_PS(t[0], t[1], t[2], t[3]);  // t[k] = byte k of entries 0..15
  const __m128i plane[4] = {_mm_castps_si128(t[0]), _mm_castps_si128(t[1]), _mm_castps_si128(t[2]),
                            _mm_castps_si128(t[3])};
  int64_t done = 0;
  for (; done + 32 <= count; done += 32) {
    __m128i indices[2];
    nibble_indices(src + done / 2, &indices[0], &indices[1]);
    for (int half = 0; half < 2; ++half) {
      const __m128i b0 = _mm_shuffle_epi8(plane[0], indices[half]), b1 = _mm_shuffle_epi8(plane[1], indices[half]);
      const __m128i b2 = _mm_shuffle_epi8(plane[2], indices[half]), b3 = _mm_shuffle_epi8(plane[3], indices[half]);
      const __m128i low01 = _mm_unpacklo_epi8(b0, b1), high01 = _mm_unpackhi_epi8(b0, b1);
      const __m128i low23 = _mm_unpacklo_epi8(b2, b3), high23 = _mm_unpackhi_epi8(b2, b3);
      float* out = dst + done + 16 * half;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_unpacklo_epi16(low01, low23));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4), _mm_unpackhi_epi16(low01, low23));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 8), _mm_unpacklo_epi16(high01, high23));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 12), _mm_unpackhi_epi16(high01, high23));
    }
  }
  expand_block_scalar(lut, src + done / 2, count - done, dst + done);
}

// The 16 scaled code values rounded to bfloat16, four at a time (round to nearest even),
// equal to float_to_bf16_bits on each for a finite absmax (the caller checks).
SHARDLORA_TARGET_SSE41 void bf16_table_sse41(const float* code, float absmax, uint16_t* lut) {
  const __m128 scale = _mm_set1_ps(absmax);
  __m128i rounded[4];
  for (int i = 0; i < 4; ++i) {
    const __m128 product = _mm_mul_ps(_mm_loadu_ps(code + 4 * i), scale);
    const __m128i bits = _mm_castps_si128(product);
    const __m128i odd = _mm_and_si128(_mm_srli_epi32(bits, 16), _mm_set1_epi32(1));
    rounded[i] = _mm_srli_epi32(_mm_add_epi32(bits, _mm_add_epi32(odd, _mm_set1_epi32(0x7fff))), 16);
  }
  _mm_storeu_si128(reinterpret_cast<__m128i*>(lut), _mm_packus_epi32(rounded[0], rounded[1]));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(lut + 8), _mm_packus_epi32(rounded[2], rounded[3]));
}

template <DType kOut>
void scaled_table(const float* code, float absmax, typename OutputElement<kOut>::type* lut, bool simd) {
  if constexpr (kOut == DType::BF16) {
    if (simd && std::isfinite(absmax)) return bf16_table_sse41(code, absmax, lut);
  }
  for (int q = 0; q < 16; ++q) lut[q] = OutputElement<kOut>::from_float(code[q] * absmax);
}

}  // namespace

void dequantize_4bit_cpu(const Packed4bit& in, void* out, DType out_dtype) {
  const float* code = quant_type_traits(in.type).code;
  const int64_t blocks = (in.numel + in.blocksize - 1) / in.blocksize;
  const int64_t block_bytes = in.blocksize / 2;  // blocksize >= 32 is even: blocks start on a byte
  const bool simd = cpu_has_sse41();
  dispatch_float_dtype(out_dtype, [&](auto tag) {
    constexpr DType kOut = decltype(tag)::value;
    using Out = typename OutputElement<kOut>::type;
    auto* dst = static_cast<Out*>(out);
#pragma omp parallel for schedule(static)
    for (int64_t block = 0; block < blocks; ++block) {
      alignas(16) Out lut[16];
      scaled_table<kOut>(code, in.absmax[block], lut, simd);
      const int64_t first = block * in.blocksize;
      const int64_t count = std::min(in.blocksize, in.numel - first);
      if (simd) {
        expand_block_sse41(lut, in.codes + block * block_bytes, count, dst + first);
      } else {
        expand_block_scalar(lut, in.codes + block * block_bytes, count, dst + first);
      }
    }
  });
}

}  // namespace shardlora::kernels
