// Scalar oracle for rms_norm: the definition in rms_norm.h, one element at a time.
#include <cmath>

#include "common/float_math.h"
#include "common/load_element.h"
#include "shardlora/kernels/rms_norm.h"

namespace shardlora::kernels {

void rms_norm_forward_ref(const void* x, const void* weight, void* y, float* inv_rms, RmsNormShape shape, float eps,
                          DType dtype) {
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    using In = InputElement<kDType>;
    using Out = OutputElement<kDType>;
    const auto* xs = static_cast<const typename In::type*>(x);
    const auto* w = static_cast<const typename In::type*>(weight);
    auto* ys = static_cast<typename Out::type*>(y);
    for (int64_t r = 0; r < shape.rows; ++r) {
      const auto* row = xs + r * shape.cols;
      float lane[kSumLanes] = {};
      for (int64_t c = 0; c < shape.cols; ++c) {
        const float v = In::to_float(row[c]);
        lane[c % kSumLanes] += v * v;
      }
      const float scale = 1.0f / std::sqrt(combine_lanes(lane) / static_cast<float>(shape.cols) + eps);
      inv_rms[r] = scale;
      for (int64_t c = 0; c < shape.cols; ++c) {
        const float normed = In::to_float(Out::from_float(In::to_float(row[c]) * scale));
        ys[r * shape.cols + c] = Out::from_float(In::to_float(w[c]) * normed);
      }
    }
  });
}

void rms_norm_backward_ref(const void* grad_y, const void* x, const void* weight, const float* inv_rms, void* grad_x,
                           float* grad_weight, RmsNormShape shape, DType dtype) {
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    using In = InputElement<kDType>;
    using Out = OutputElement<kDType>;
    const auto* dy = static_cast<const typename In::type*>(grad_y);
    const auto* xs = static_cast<const typename In::type*>(x);
    const auto* w = static_cast<const typename In::type*>(weight);
    auto* dx = static_cast<typename Out::type*>(grad_x);
    for (int64_t r = 0; r < shape.rows; ++r) {
      const int64_t base = r * shape.cols;
      float lane[kSumLanes] = {};
      for (int64_t c = 0; c < shape.cols; ++c) {
        const float g = In::to_float(dy[base + c]) * In::to_float(w[c]);
        lane[c % kSumLanes] += g * (In::to_float(xs[base + c]) * inv_rms[r]);
      }
      const float mean = combine_lanes(lane) / static_cast<float>(shape.cols);
      for (int64_t c = 0; c < shape.cols; ++c) {
        const float g = In::to_float(dy[base + c]) * In::to_float(w[c]);
        const float n = In::to_float(xs[base + c]) * inv_rms[r];
        dx[base + c] = Out::from_float(inv_rms[r] * (g - n * mean));
      }
    }
    if (!grad_weight) return;
    for (int64_t c = 0; c < shape.cols; ++c) grad_weight[c] = 0.0f;
    for (int64_t r = 0; r < shape.rows; ++r) {
      for (int64_t c = 0; c < shape.cols; ++c) {
        const int64_t i = r * shape.cols + c;
        const float normed = In::to_float(Out::from_float(In::to_float(xs[i]) * inv_rms[r]));
        grad_weight[c] += In::to_float(dy[i]) * normed;
      }
    }
  });
}

}  // namespace shardlora::kernels
