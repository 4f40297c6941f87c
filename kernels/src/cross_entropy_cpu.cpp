// cross_entropy_rows on the CPU: OpenMP threads over rows. A row is read once for its loss:
// each group of 64 logits is loaded into registers, its max folded into the running max, and
// its exponentials added to the eight lanes (AVX2 eight at a time, AVX-512 sixteen, each half
// added to its eight lanes in the reference's order); the last, shorter group goes through
// the reference's scalar steps on the same lanes. The gradient pass reuses the exponentials,
// kept in a per-thread row of scratch, of every group whose shift is the row's final max,
// and takes e^(z - m) anew for the others (those before the max last rose). Without AVX2 the
// reference runs on each row.
// GCC 12's AVX-512 intrinsics warn about their own _mm512_undefined_* (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/avx2_math.h"
#include "common/avx512_math.h"
#include "common/load_element.h"
#include "cross_entropy_groups.h"
#include "cross_entropy_impl.h"

namespace shardlora::kernels {
namespace {

using avx2::at;

constexpr int kGroupVectors8 = kCrossEntropyGroup / 8;

SHARDLORA_TARGET_AVX2 float horizontal_max(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}

SHARDLORA_TARGET_AVX512 float horizontal_max(__m512 v) {
  return horizontal_max(_mm256_max_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}

// The whole groups of a row, [0, groups_end), each as add_group_scalar takes it, eight logits
// at a time: their lane sums, with m the running max after them; each group's shift into
// shifts unless exps (then kept) is null.
template <DType kDType>
SHARDLORA_TARGET_AVX2 __m256 whole_groups_avx2(const void* z, int64_t groups_end, float& m, float* exps, float* shifts) {
  float running = m;
  __m256 lanes = _mm256_setzero_ps();
  for (int64_t c = 0; c < groups_end; c += kCrossEntropyGroup) {
    __m256 v[kGroupVectors8];
    for (int i = 0; i < kGroupVectors8; ++i) v[i] = avx2::load8<kDType>(at<kDType>(z, c + 8 * i));
    __m256 group_max = v[0];
    for (int i = 1; i < kGroupVectors8; ++i) group_max = _mm256_max_ps(group_max, v[i]);
    lanes = _mm256_mul_ps(lanes, _mm256_set1_ps(raise_running_max(running, horizontal_max(group_max))));
    const float shift = group_shift(running);
    const __m256 shift_lanes = _mm256_set1_ps(shift);
    for (int i = 0; i < kGroupVectors8; ++i) {
      const __m256 e = avx2::exp_approx(_mm256_sub_ps(v[i], shift_lanes));
      if (exps) _mm256_storeu_ps(exps + c + 8 * i, e);
      lanes = _mm256_add_ps(lanes, e);
    }
    if (exps) shifts[c / kCrossEntropyGroup] = shift;
  }
  m = running;
  return lanes;
}

// The same, sixteen at a time.
template <DType kDType>
SHARDLORA_TARGET_AVX512 __m256 whole_groups_avx512(const void* z, int64_t groups_end, float& m, float* exps, float* shifts) {
  static_assert(kCrossEntropyGroup == 64, "four vectors of sixteen");
  float running = m;
  __m256 lanes = _mm256_setzero_ps();
  for (int64_t c = 0; c < groups_end; c += kCrossEntropyGroup) {
    const __m512 v0 = avx512::load16<kDType>(at<kDType>(z, c)), v1 = avx512::load16<kDType>(at<kDType>(z, c + 16));
    const __m512 v2 = avx512::load16<kDType>(at<kDType>(z, c + 32)), v3 = avx512::load16<kDType>(at<kDType>(z, c + 48));
    const __m512 group_max = _mm512_max_ps(_mm512_max_ps(v0, v1), _mm512_max_ps(v2, v3));
    lanes = _mm256_mul_ps(lanes, _mm256_set1_ps(raise_running_max(running, horizontal_max(group_max))));
    const float shift = group_shift(running);
    const __m512 shift_lanes = _mm512_set1_ps(shift);
    int64_t at_c = c;
    for (const __m512 v : {v0, v1, v2, v3}) {
      const __m512 e = avx512::exp_approx(_mm512_sub_ps(v, shift_lanes));
      if (exps) _mm512_storeu_ps(exps + at_c, e);
      lanes = avx512::add_to_lanes(lanes, e);
      at_c += 16;
    }
    if (exps) shifts[c / kCrossEntropyGroup] = shift;
  }
  m = running;
  return lanes;
}

// exps: vocab floats and shifts: one float per group, scratch when write_gradient (each
// e^(z - shift) is kept from the loss's pass for the gradient's), else unused.
template <DType kDType>
SHARDLORA_TARGET_AVX2 void row_avx2(void* z, int64_t target, float* loss, int64_t vocab, bool write_gradient,
                                    float* exps, float* shifts, bool avx512) {
  using In = InputElement<kDType>;
  auto* values = static_cast<typename In::type*>(z);
  const int64_t groups_end = vocab - vocab % kCrossEntropyGroup;
  float* kept = write_gradient ? exps : nullptr;
  float m = -std::numeric_limits<float>::infinity();
  const __m256 lanes = avx512 ? whole_groups_avx512<kDType>(z, groups_end, m, kept, shifts)
                              : whole_groups_avx2<kDType>(z, groups_end, m, kept, shifts);
  alignas(32) float lane[kSumLanes];
  _mm256_store_ps(lane, lanes);
  if (groups_end < vocab) {
    const float shift = add_group_scalar<kDType>(values, groups_end, vocab, m, lane, kept);
    if (write_gradient) shifts[groups_end / kCrossEntropyGroup] = shift;
  }
  const float sum = combine_lanes(lane);

  const bool valid = target >= 0 && target < vocab;
  const float target_logit = valid ? In::to_float(values[target]) : std::numeric_limits<float>::quiet_NaN();
  *loss = (m + std::log(sum)) - target_logit;
  if (!write_gradient) return;
  const float inverse = 1.0f / sum;
  if (!valid) {
    for (int64_t c = 0; c < vocab; ++c) values[c] = OutputElement<kDType>::from_float(target_logit);
    return;
  }
  // e^(z - m): kept where the group's shift is m, else taken anew.
  const auto exponential = [&](int64_t c) {
    return shifts[c / kCrossEntropyGroup] == m ? exps[c] : exp_approx(In::to_float(values[c]) - m);
  };
  const float target_probability = exponential(target) * inverse;
  const __m256 scale = _mm256_set1_ps(inverse), shift8 = _mm256_set1_ps(m);
  for (int64_t first = 0; first < vocab; first += kCrossEntropyGroup) {
    const int64_t end = std::min(first + kCrossEntropyGroup, vocab), vector_end = first + (end - first) / 8 * 8;
    const bool reuse = shifts[first / kCrossEntropyGroup] == m;
    for (int64_t c = first; c < vector_end; c += 8) {
      const __m256 e = reuse ? _mm256_loadu_ps(exps + c)
                             : avx2::exp_approx(_mm256_sub_ps(avx2::load8<kDType>(at<kDType>(z, c)), shift8));
      avx2::store8<kDType>(at<kDType>(z, c), _mm256_mul_ps(e, scale));
    }
    for (int64_t c = vector_end; c < end; ++c) values[c] = OutputElement<kDType>::from_float(exponential(c) * inverse);
  }
  values[target] = OutputElement<kDType>::from_float(target_probability - 1.0f);
}

}  // namespace

void cross_entropy_rows_cpu(void* logits, const int64_t* targets, float* losses, CrossEntropyShape shape,
                            int64_t ignore_index, bool write_gradient, DType dtype) {
  const bool simd = cpu_has_avx2(), avx512 = cpu_has_avx512();
  const int64_t groups = (shape.vocab + kCrossEntropyGroup - 1) / kCrossEntropyGroup;
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
#pragma omp parallel
    {
      const bool scratch = simd && write_gradient;
      std::vector<float> exps(scratch ? static_cast<size_t>(shape.vocab) : 0), shifts(scratch ? static_cast<size_t>(groups) : 0);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < shape.rows; ++r) {
        void* row = at<kDType>(logits, r * shape.vocab);
        if (!simd || targets[r] == ignore_index) {
          cross_entropy_rows_ref(row, targets + r, losses + r, {1, shape.vocab}, ignore_index, write_gradient, dtype);
        } else {
          row_avx2<kDType>(row, targets[r], losses + r, shape.vocab, write_gradient, exps.data(), shifts.data(), avx512);
        }
      }
    }
  });
}

}  // namespace shardlora::kernels
