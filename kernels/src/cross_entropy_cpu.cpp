// cross_entropy_rows on the CPU: OpenMP threads over rows. Per row three passes (max; sum of
// exponentials, kept in a per-thread row of scratch; gradient from them), AVX2 eight logits
// at a time with the reference's operations and lane order; a row's last vocab % 8 logits
// go through the scalar forms on the same lanes. With AVX-512 the sum's exponentials, most
// of the work, are taken sixteen at a time, each half added to its eight lanes in the
// reference's order. Without AVX2 the reference runs on each row.
// GCC 12's AVX-512 intrinsics warn about their own _mm512_undefined_* (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/avx2_math.h"
#include "common/avx512_math.h"
#include "common/load_element.h"
#include "cross_entropy_impl.h"

namespace shardlora::kernels {
namespace {

using avx2::at;

// The sum pass over the logits [first, end) (a multiple of 8 apart): e^(z - m) added to
// `lanes`, and kept in exps unless it is null.
template <DType kDType>
SHARDLORA_TARGET_AVX2 __m256 exp_sum_avx2(const void* z, int64_t first, int64_t end, float m, float* exps, __m256 lanes) {
  const __m256 shift = _mm256_set1_ps(m);
  for (int64_t c = first; c < end; c += 8) {
    const __m256 e = avx2::exp_approx(_mm256_sub_ps(avx2::load8<kDType>(at<kDType>(z, c)), shift));
    if (exps) _mm256_storeu_ps(exps + c, e);
    lanes = _mm256_add_ps(lanes, e);
  }
  return lanes;
}

template <DType kDType>
SHARDLORA_TARGET_AVX512 __m256 exp_sum_avx512(const void* z, int64_t end, float m, float* exps) {
  const __m512 shift = _mm512_set1_ps(m);
  __m256 lanes = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= end; c += 16) {
    const __m512 e = avx512::exp_approx(_mm512_sub_ps(avx512::load16<kDType>(at<kDType>(z, c)), shift));
    if (exps) _mm512_storeu_ps(exps + c, e);
    lanes = avx512::add_to_lanes(lanes, e);
  }
  return exp_sum_avx2<kDType>(z, c, end, m, exps, lanes);
}

// exps: vocab floats of scratch when write_gradient (each e^(z - m) is kept from the sum's
// pass for the gradient's: the same values, so computed once), else unused. avx512: the sum
// pass sixteen at a time.
template <DType kDType>
SHARDLORA_TARGET_AVX2 void row_avx2(void* z, int64_t target, float* loss, int64_t vocab, bool write_gradient,
                                    float* exps, bool avx512) {
  using In = InputElement<kDType>;
  const auto* values = static_cast<const typename In::type*>(z);
  const int64_t vector_end = vocab - vocab % 8;
  alignas(32) float lane[kSumLanes];

  __m256 lanes = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t c = 0; c < vector_end; c += 8) lanes = _mm256_max_ps(avx2::load8<kDType>(at<kDType>(z, c)), lanes);
  _mm256_store_ps(lane, lanes);
  for (int64_t c = vector_end; c < vocab; ++c) lane[c % kSumLanes] = std::max(lane[c % kSumLanes], In::to_float(values[c]));
  const float m = *std::max_element(lane, lane + kSumLanes);

  float* kept = write_gradient ? exps : nullptr;
  lanes = avx512 ? exp_sum_avx512<kDType>(z, vector_end, m, kept)
                 : exp_sum_avx2<kDType>(z, 0, vector_end, m, kept, _mm256_setzero_ps());
  _mm256_store_ps(lane, lanes);
  for (int64_t c = vector_end; c < vocab; ++c) {
    const float e = exp_approx(In::to_float(values[c]) - m);
    if (write_gradient) exps[c] = e;
    lane[c % kSumLanes] += e;
  }
  const float sum = combine_lanes(lane);

  const bool valid = target >= 0 && target < vocab;
  const float target_logit = valid ? In::to_float(values[target]) : std::numeric_limits<float>::quiet_NaN();
  *loss = (m + std::log(sum)) - target_logit;
  if (!write_gradient) return;
  const float inverse = 1.0f / sum;
  if (!valid) {
    for (int64_t c = 0; c < vocab; ++c) static_cast<typename In::type*>(z)[c] = OutputElement<kDType>::from_float(target_logit);
    return;
  }
  const __m256 scale = _mm256_set1_ps(inverse);
  for (int64_t c = 0; c < vector_end; c += 8) avx2::store8<kDType>(at<kDType>(z, c), _mm256_mul_ps(_mm256_loadu_ps(exps + c), scale));
  auto* out = static_cast<typename In::type*>(z);
  for (int64_t c = vector_end; c < vocab; ++c) out[c] = OutputElement<kDType>::from_float(exps[c] * inverse);
  out[target] = OutputElement<kDType>::from_float(exps[target] * inverse - 1.0f);
}

}  // namespace

void cross_entropy_rows_cpu(void* logits, const int64_t* targets, float* losses, CrossEntropyShape shape,
                            int64_t ignore_index, bool write_gradient, DType dtype) {
  const bool simd = cpu_has_avx2(), avx512 = cpu_has_avx512();
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
#pragma omp parallel
    {
      std::vector<float> exps(simd && write_gradient ? static_cast<size_t>(shape.vocab) : 0);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < shape.rows; ++r) {
        void* row = at<kDType>(logits, r * shape.vocab);
        if (!simd || targets[r] == ignore_index) {
          cross_entropy_rows_ref(row, targets + r, losses + r, {1, shape.vocab}, ignore_index, write_gradient, dtype);
        } else {
          row_avx2<kDType>(row, targets[r], losses + r, shape.vocab, write_gradient, exps.data(), avx512);
        }
      }
    }
  });
}

}  // namespace shardlora::kernels
