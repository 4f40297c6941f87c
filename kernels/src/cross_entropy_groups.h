// The running max of cross_entropy_rows, shared by the reference and the CPU kernel so that
// both take the same steps (see cross_entropy.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "common/float_math.h"
#include "common/load_element.h"

namespace shardlora::kernels {

// Logits per step of the running max: each group's max is taken from the values that are
// then exponentiated while still in registers, so a row is read from memory once. A multiple
// of 16, AVX-512's width.
constexpr int64_t kCrossEntropyGroup = 64;

// Folds a group's max into the running max m. Returns the factor the lane sums so far take:
// e^(m_old - m_new) when m rises (0 from -inf), else 1 (they are left as they are).
inline float raise_running_max(float& m, float group_max) {
  if (!(group_max > m)) return 1.0f;
  const float factor = exp_approx(m - group_max);
  m = group_max;
  return factor;
}

// What a group's exponentials are taken against: m, or 0 while m is -inf (every logit so far
// is -inf, and e^(-inf - 0) = 0 adds nothing where e^(-inf - m) would be a NaN).
inline float group_shift(float m) { return m == -std::numeric_limits<float>::infinity() ? 0.0f : m; }

// One group, the logits [first, end) of a row, one at a time: its max folded into m, the lanes
// scaled, and e^(z - shift) added to lane c % 8 (and kept in exps unless it is null). Returns
// the shift. The reference's whole row and the CPU kernel's last, shorter group.
template <DType kDType>
float add_group_scalar(const typename InputElement<kDType>::type* z, int64_t first, int64_t end, float& m,
                       float lane[kSumLanes], float* exps) {
  using In = InputElement<kDType>;
  float group_max = -std::numeric_limits<float>::infinity();
  for (int64_t c = first; c < end; ++c) group_max = std::max(group_max, In::to_float(z[c]));
  const float factor = raise_running_max(m, group_max);
  for (int j = 0; j < kSumLanes; ++j) lane[j] *= factor;
  const float shift = group_shift(m);
  for (int64_t c = first; c < end; ++c) {
    const float e = exp_approx(In::to_float(z[c]) - shift);
    if (exps) exps[c] = e;
    lane[c % kSumLanes] += e;
  }
  return shift;
}

}  // namespace shardlora::kernels
