// Writes an fp32 value into an output buffer of a runtime dtype, with the project's
// rounding (round to nearest even). Shared by the scalar references and the CPU kernels.
#pragma once

#include <cstdint>
#include <type_traits>

#include "shardlora/kernels/check.h"
#include "shardlora/kernels/dtype.h"
#include "shardlora/kernels/half_float.h"

namespace shardlora::kernels {

template <DType kOut>
struct OutputElement;

template <>
struct OutputElement<DType::F32> {
  using type = float;
  static float from_float(float value) { return value; }
};
template <>
struct OutputElement<DType::F16> {
  using type = uint16_t;
  static uint16_t from_float(float value) { return float_to_f16_bits(value); }
};
template <>
struct OutputElement<DType::BF16> {
  using type = uint16_t;
  static uint16_t from_float(float value) { return float_to_bf16_bits(value); }
};

template <DType kDType>
using DTypeTag = std::integral_constant<DType, kDType>;

// Calls body(DTypeTag<dtype>{}) for the float output dtypes; any other dtype is an error.
template <typename Body>
void dispatch_float_dtype(DType dtype, Body&& body) {
  switch (dtype) {
    case DType::F32: body(DTypeTag<DType::F32>{}); return;
    case DType::F16: body(DTypeTag<DType::F16>{}); return;
    case DType::BF16: body(DTypeTag<DType::BF16>{}); return;
    default: break;
  }
  throw Error(detail::concat("expected a float output dtype (float32, float16, bfloat16), got ",
                             dtype_name(dtype)));
}

}  // namespace shardlora::kernels
