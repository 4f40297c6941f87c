// Reads one element of a runtime input dtype as fp32 (exact for F16 / BF16 / F32).
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/store_element.h"

namespace shardlora::kernels {

template <DType kIn>
struct InputElement;

template <>
struct InputElement<DType::F32> {
  using type = float;
  SHARDLORA_HOST_DEVICE static float to_float(float value) { return value; }
};
template <>
struct InputElement<DType::F16> {
  using type = uint16_t;
  SHARDLORA_HOST_DEVICE static float to_float(uint16_t bits) { return f16_bits_to_float(bits); }
};
template <>
struct InputElement<DType::BF16> {
  using type = uint16_t;
  SHARDLORA_HOST_DEVICE static float to_float(uint16_t bits) { return bf16_bits_to_float(bits); }
};

// `count` elements of a float dtype (F32, F16, BF16) widened to fp32 (exact).
inline std::vector<float> decode_to_float(const void* data, DType dtype, int64_t count) {
  std::vector<float> values(static_cast<size_t>(count));
  dispatch_float_dtype(dtype, [&](auto tag) {
    using Element = InputElement<decltype(tag)::value>;
    const auto* src = static_cast<const typename Element::type*>(data);
    for (int64_t i = 0; i < count; ++i) values[i] = Element::to_float(src[i]);
  });
  return values;
}

}  // namespace shardlora::kernels
