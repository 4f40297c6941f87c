// Scalar oracle for rope_apply: the definition in rope.h, one element pair at a time.
#include "common/load_element.h"
#include "shardlora/kernels/rope.h"

namespace shardlora::kernels {

void rope_apply_ref(void* x, const void* cos, const void* sin, RopeShape shape, RopeDirection direction, DType dtype) {
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    using In = InputElement<kDType>;
    using Out = OutputElement<kDType>;
    auto* xs = static_cast<typename Out::type*>(x);
    const auto* cs = static_cast<const typename In::type*>(cos);
    const auto* ss = static_cast<const typename In::type*>(sin);
    const int64_t half = shape.head_dim / 2;
    for (int64_t t = 0; t < shape.tokens; ++t) {
      for (int64_t h = 0; h < shape.heads; ++h) {
        auto* head = xs + (t * shape.heads + h) * shape.head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float c = In::to_float(cs[t * half + i]);
          const float s = direction == RopeDirection::Forward ? In::to_float(ss[t * half + i]) : -In::to_float(ss[t * half + i]);
          const float x1 = In::to_float(head[i]), x2 = In::to_float(head[i + half]);
          head[i] = Out::from_float(x1 * c - x2 * s);
          head[i + half] = Out::from_float(x2 * c + x1 * s);
        }
      }
    }
  });
}

}  // namespace shardlora::kernels
