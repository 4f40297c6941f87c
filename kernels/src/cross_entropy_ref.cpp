// Scalar oracle for cross_entropy_rows: the definition in cross_entropy.h, one element at a
// time.
#include <algorithm>
#include <cmath>
#include <limits>

#include "common/float_math.h"
#include "common/load_element.h"
#include "cross_entropy_groups.h"
#include "shardlora/kernels/cross_entropy.h"

namespace shardlora::kernels {

void cross_entropy_rows_ref(void* logits, const int64_t* targets, float* losses, CrossEntropyShape shape,
                            int64_t ignore_index, bool write_gradient, DType dtype) {
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    using In = InputElement<kDType>;
    using Out = OutputElement<kDType>;
    for (int64_t r = 0; r < shape.rows; ++r) {
      auto* z = static_cast<typename Out::type*>(logits) + r * shape.vocab;
      const int64_t t = targets[r];
      if (t == ignore_index) {
        losses[r] = 0.0f;
        if (write_gradient) std::fill(z, z + shape.vocab, Out::from_float(0.0f));
        continue;
      }
      const bool valid = t >= 0 && t < shape.vocab;
      float m = -std::numeric_limits<float>::infinity(), lane[kSumLanes] = {};
      for (int64_t first = 0; first < shape.vocab; first += kCrossEntropyGroup) {
        add_group_scalar<kDType>(z, first, std::min(first + kCrossEntropyGroup, shape.vocab), m, lane, nullptr);
      }
      const float sum = combine_lanes(lane);
      const float target_logit = valid ? In::to_float(z[t]) : std::numeric_limits<float>::quiet_NaN();
      losses[r] = (m + std::log(sum)) - target_logit;
      if (!write_gradient) continue;
      const float inverse = 1.0f / sum;
      for (int64_t c = 0; c < shape.vocab; ++c) {
        const float p = exp_approx(In::to_float(z[c]) - m) * inverse;
        z[c] = Out::from_float(valid ? (c == t ? p - 1.0f : p) : target_logit);
      }
    }
  });
}

}  // namespace shardlora::kernels
