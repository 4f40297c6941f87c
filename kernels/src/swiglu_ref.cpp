// Scalar oracle for swiglu: the definition in swiglu.h, one element at a time.
#include "common/float_math.h"
#include "common/load_element.h"
#include "shardlora/kernels/swiglu.h"

namespace shardlora::kernels {

void swiglu_forward_ref(const void* gate, const void* up, void* y, int64_t count, DType dtype) {
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    using In = InputElement<kDType>;
    using Out = OutputElement<kDType>;
    const auto* g = static_cast<const typename In::type*>(gate);
    const auto* u = static_cast<const typename In::type*>(up);
    auto* out = static_cast<typename Out::type*>(y);
    for (int64_t i = 0; i < count; ++i) {
      const float x = In::to_float(g[i]);
      const float silu = In::to_float(Out::from_float(x * sigmoid_approx(x)));
      out[i] = Out::from_float(silu * In::to_float(u[i]));
    }
  });
}

void swiglu_backward_ref(const void* grad_y, const void* gate, const void* up, void* grad_gate, void* grad_up,
                         int64_t count, DType dtype) {
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    using In = InputElement<kDType>;
    using Out = OutputElement<kDType>;
    const auto* dy = static_cast<const typename In::type*>(grad_y);
    const auto* g = static_cast<const typename In::type*>(gate);
    const auto* u = static_cast<const typename In::type*>(up);
    auto* dg = static_cast<typename Out::type*>(grad_gate);
    auto* du = static_cast<typename Out::type*>(grad_up);
    for (int64_t i = 0; i < count; ++i) {
      const float x = In::to_float(g[i]), up_value = In::to_float(u[i]), grad = In::to_float(dy[i]);
      const float s = sigmoid_approx(x);
      const float silu = In::to_float(Out::from_float(x * s));
      dg[i] = Out::from_float((grad * up_value) * (s * (1.0f + x * (1.0f - s))));
      du[i] = Out::from_float(grad * silu);
    }
  });
}

}  // namespace shardlora::kernels
