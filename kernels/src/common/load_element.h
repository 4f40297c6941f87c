// Reads one element of a runtime input dtype as fp32 (exact for F16 / BF16 / F32).
#pragma once

#include <cstdint>
#include <type_traits>

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

}  // namespace shardlora::kernels
