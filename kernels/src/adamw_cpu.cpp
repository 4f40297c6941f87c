// The AdamW step on the CPU: OpenMP threads over chunks. 32-bit state: an SSE span of four
// lanes and a scalar tail with the same fp32 operations in the same order, so the results
// equal the reference bit for bit. 8-bit state: threads over blocks; with AVX2 each block is
// dequantized by gathers from the maps, updated eight lanes at a time and requantized
// through the threshold lookup (quantize_8bit_lookup.h), which gives the reference's codes;
// without AVX2, the reference.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "adamw_impl.h"
#include "common/adamw_update.h"
#include "common/cpu_simd.h"
#include "common/quantize_8bit_lookup.h"
#include "common/quantize_value.h"

namespace shardlora::kernels {
namespace {

// Elements per OpenMP work item: big enough to amortise scheduling, a multiple of every
// vector width and of the 8-bit block.
constexpr int64_t kChunk = 1 << 14;

int thread_count(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

SHARDLORA_TARGET_SSE41 void adamw_span_sse(float* p, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s) {
  const __m128 grad_scale = _mm_set1_ps(s.grad_scale), decay = _mm_set1_ps(s.decay), beta1 = _mm_set1_ps(s.beta1),
               beta2 = _mm_set1_ps(s.beta2), one_minus_beta1 = _mm_set1_ps(s.one_minus_beta1),
               one_minus_beta2 = _mm_set1_ps(s.one_minus_beta2), sqrt_bc2 = _mm_set1_ps(s.sqrt_bias_correction2),
               eps = _mm_set1_ps(s.eps), step_size = _mm_set1_ps(s.step_size);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m128 gi = _mm_mul_ps(_mm_loadu_ps(g + i), grad_scale);
    __m128 pi = _mm_mul_ps(_mm_loadu_ps(p + i), decay);
    const __m128 mi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(m + i), beta1), _mm_mul_ps(gi, one_minus_beta1));
    const __m128 vi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(v + i), beta2), _mm_mul_ps(_mm_mul_ps(gi, gi), one_minus_beta2));
    const __m128 denom = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(vi), sqrt_bc2), eps);
    pi = _mm_sub_ps(pi, _mm_mul_ps(step_size, _mm_div_ps(mi, denom)));
    _mm_storeu_ps(p + i, pi);
    _mm_storeu_ps(m + i, mi);
    _mm_storeu_ps(v + i, vi);
  }
  for (; i < n; ++i) adamw_update(p[i], m[i], v[i], g[i], s);
}

// adamw_update on eight lanes: the same operations in the same order.
SHARDLORA_TARGET_AVX2 void adamw_update_avx2(__m256& p, __m256& m, __m256& v, __m256 g, const AdamWScalars& s) {
  g = _mm256_mul_ps(g, _mm256_set1_ps(s.grad_scale));
  p = _mm256_mul_ps(p, _mm256_set1_ps(s.decay));
  m = _mm256_add_ps(_mm256_mul_ps(m, _mm256_set1_ps(s.beta1)), _mm256_mul_ps(g, _mm256_set1_ps(s.one_minus_beta1)));
  v = _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(s.beta2)), _mm256_mul_ps(_mm256_mul_ps(g, g), _mm256_set1_ps(s.one_minus_beta2)));
  const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(v), _mm256_set1_ps(s.sqrt_bias_correction2)), _mm256_set1_ps(s.eps));
  p = _mm256_sub_ps(p, _mm256_mul_ps(_mm256_set1_ps(s.step_size), _mm256_div_ps(m, denom)));
}

// One 8-bit block of `count` (<= 256) elements: the reference's operations, eight lanes at a
// time; the last count % 8 elements as the reference does them.
SHARDLORA_TARGET_AVX2 void adamw_8bit_block_avx2(float* param, const float* grad, AdamW8bitState state, int64_t count,
                                                 const AdamWScalars& s, const Quantize8bitLookup& m_lookup,
                                                 const Quantize8bitLookup& v_lookup) {
  alignas(32) float m[kAdamW8bitBlocksize], v[kAdamW8bitBlocksize];
  const __m256 m_scale_in = _mm256_set1_ps(*state.m_absmax), v_scale_in = _mm256_set1_ps(*state.v_absmax);
  __m256 m_max = _mm256_setzero_ps(), v_max = _mm256_setzero_ps();
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const int64_t vector_end = count - count % 8;
  for (int64_t i = 0; i < vector_end; i += 8) {
    const __m256i m_codes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(state.m_codes + i)));
    const __m256i v_codes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(state.v_codes + i)));
    __m256 mi = _mm256_mul_ps(_mm256_i32gather_ps(m_lookup.map, m_codes, 4), m_scale_in);
    __m256 vi = _mm256_mul_ps(_mm256_i32gather_ps(v_lookup.map, v_codes, 4), v_scale_in);
    __m256 pi = _mm256_loadu_ps(param + i);
    adamw_update_avx2(pi, mi, vi, _mm256_loadu_ps(grad + i), s);
    _mm256_storeu_ps(param + i, pi);
    _mm256_store_ps(m + i, mi);
    _mm256_store_ps(v + i, vi);
    m_max = _mm256_max_ps(_mm256_and_ps(mi, magnitude), m_max);  // a NaN lane keeps the running max, as std::max does
    v_max = _mm256_max_ps(vi, v_max);
  }
  alignas(32) float lanes_m[8], lanes_v[8];
  _mm256_store_ps(lanes_m, m_max);
  _mm256_store_ps(lanes_v, v_max);
  float m_absmax = 0.0f, v_absmax = 0.0f;
  for (int lane = 0; lane < 8; ++lane) {
    m_absmax = std::max(m_absmax, lanes_m[lane]);
    v_absmax = std::max(v_absmax, lanes_v[lane]);
  }
  for (int64_t i = vector_end; i < count; ++i) {
    m[i] = m_lookup.map[state.m_codes[i]] * *state.m_absmax;
    v[i] = v_lookup.map[state.v_codes[i]] * *state.v_absmax;
    adamw_update(param[i], m[i], v[i], grad[i], s);
    m_absmax = std::max(m_absmax, std::fabs(m[i]));
    v_absmax = std::max(v_absmax, v[i]);
  }
  *state.m_absmax = m_absmax;
  *state.v_absmax = v_absmax;
  const float m_scale = reciprocal_scale(m_absmax), v_scale = reciprocal_scale(v_absmax);
  for (int64_t i = 0; i < vector_end; i += 8) {
    quantize8_avx2(m_lookup, _mm256_mul_ps(_mm256_load_ps(m + i), _mm256_set1_ps(m_scale)), state.m_codes + i);
    quantize8_avx2(v_lookup, _mm256_mul_ps(_mm256_load_ps(v + i), _mm256_set1_ps(v_scale)), state.v_codes + i);
  }
  for (int64_t i = vector_end; i < count; ++i) {
    state.m_codes[i] = quantize_8bit_value(m_lookup.map, m[i] * m_scale);
    state.v_codes[i] = quantize_8bit_value(v_lookup.map, v[i] * v_scale);
  }
}

}  // namespace

void adamw_step_32bit_cpu(float* param, const float* grad, AdamW32bitState state, int64_t numel, const AdamWScalars& s,
                          int threads) {
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  const bool simd = cpu_has_sse41();
#pragma omp parallel for schedule(static) num_threads(thread_count(threads))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t first = c * kChunk, count = std::min(kChunk, numel - first);
    if (simd) {
      adamw_span_sse(param + first, grad + first, state.m + first, state.v + first, count, s);
    } else {
      adamw_step_32bit_ref(param + first, grad + first, {state.m + first, state.v + first}, count, s);
    }
  }
}

void adamw_step_8bit_cpu(float* param, const float* grad, AdamW8bitState state, int64_t numel, const AdamWScalars& s,
                         int threads) {
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  constexpr int64_t kBlocksPerChunk = kChunk / kAdamW8bitBlocksize;
  const bool simd = cpu_has_avx2();
  const Quantize8bitLookup* m_lookup = simd ? &Quantize8bitLookup::for_map(QuantType::DYNAMIC8_SIGNED) : nullptr;
  const Quantize8bitLookup* v_lookup = simd ? &Quantize8bitLookup::for_map(QuantType::DYNAMIC8_UNSIGNED) : nullptr;
#pragma omp parallel for schedule(static) num_threads(thread_count(threads))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t first = c * kChunk, block = c * kBlocksPerChunk, count = std::min(kChunk, numel - first);
    const AdamW8bitState chunk{state.m_codes + first, state.m_absmax + block, state.v_codes + first, state.v_absmax + block};
    if (!simd) {
      adamw_step_8bit_ref(param + first, grad + first, chunk, count, s);
      continue;
    }
    for (int64_t done = 0; done < count; done += kAdamW8bitBlocksize) {
      const int64_t b = done / kAdamW8bitBlocksize;
      adamw_8bit_block_avx2(param + first + done, grad + first + done,
                            {chunk.m_codes + done, chunk.m_absmax + b, chunk.v_codes + done, chunk.v_absmax + b},
                            std::min(kAdamW8bitBlocksize, count - done), s, *m_lookup, *v_lookup);
    }
  }
}

}  // namespace shardlora::kernels
