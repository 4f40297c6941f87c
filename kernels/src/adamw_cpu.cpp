// The AdamW step on the CPU: OpenMP threads over chunks. 32-bit state: an SSE span of four
// lanes and a scalar tail with the same fp32 operations in the same order, so the results
// equal the reference bit for bit. 8-bit state: threads over blocks, each the reference's.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>

#include "adamw_impl.h"
#include "common/adamw_update.h"
#include "common/cpu_simd.h"

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
#pragma omp parallel for schedule(static) num_threads(thread_count(threads))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t first = c * kChunk, block = c * kBlocksPerChunk;
    adamw_step_8bit_ref(param + first, grad + first,
                        {state.m_codes + first, state.m_absmax + block, state.v_codes + first, state.v_absmax + block},
                        std::min(kChunk, numel - first), s);
  }
}

}  // namespace shardlora::kernels
