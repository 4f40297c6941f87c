// Device-side counterpart of store_element.h: fp32 -> output element with CUDA's
// round-to-nearest-even intrinsics (the same bits as half_float.h on the host).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/load_element.h"
#include "shardlora/kernels/dtype.h"

namespace shardlora::kernels {

template <DType kOut>
struct CudaOutputElement;

template <>
struct CudaOutputElement<DType::F32> {
  using type = float;
  static __device__ __forceinline__ float from_float(float value) { return value; }
};
template <>
struct CudaOutputElement<DType::F16> {
  using type = uint16_t;
  static __device__ __forceinline__ uint16_t from_float(float value) {
    return __half_as_ushort(__float2half_rn(value));
  }
};
template <>
struct CudaOutputElement<DType::BF16> {
  using type = uint16_t;
  static __device__ __forceinline__ uint16_t from_float(float value) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(value));
  }
};

// The storage type of a float dtype's elements, and a value rounded to the dtype and back.
template <DType kDType>
using Element = typename InputElement<kDType>::type;

template <DType kDType>
__device__ __forceinline__ float rounded(float value) {
  return InputElement<kDType>::to_float(CudaOutputElement<kDType>::from_float(value));
}

}  // namespace shardlora::kernels
