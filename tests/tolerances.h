// The project's one table of numeric tolerances. Bit-exact comparisons need none; these
// are for results whose summation order legitimately differs from the reference.
#pragma once

#include <cstdint>

#include "shardlora/kernels/dtype.h"

namespace shardlora::testing {

// Unit roundoff (half an ulp at 1.0) of each float dtype.
constexpr double unit_roundoff(kernels::DType dtype) {
  switch (dtype) {
    case kernels::DType::F32: return 0x1p-24;
    case kernels::DType::F16: return 0x1p-11;
    case kernels::DType::BF16: return 0x1p-8;
    default: return 0.0;
  }
}

// Rigorous bound on |kernel - reference| for an fp32 dot product of `terms` products (any
// summation order, fma or not): gamma_(terms+1) * sum |w_k x_k| (Higham, Accuracy and
// Stability, §3.1), plus one ulp of the output dtype (each side rounds its own sum, so
// the two may land on neighbouring values) and the reference's own fp64->fp32 rounding.
inline double dot_product_tolerance(int64_t terms, double sum_abs_products, double reference,
                                    kernels::DType output) {
  const double u = unit_roundoff(kernels::DType::F32);
  const double n = static_cast<double>(terms + 1);
  const double gamma = n * u / (1.0 - n * u);
  const double magnitude = reference < 0 ? -reference : reference;
  return gamma * sum_abs_products + (2 * unit_roundoff(output) + u) * (magnitude + gamma * sum_abs_products);
}

// Mean absolute error of NF4 on N(0,1) data at blocksize 64 with nearest-code rounding is
// 0.0727 (the independent figure); the bound leaves room for sampling noise.
constexpr double kNf4Normal64MaxMeanAbsError = 0.0735;
// Double quantization may move each block's dequantized scale by less than this (relative).
constexpr double kDoubleQuantMaxScaleChange = 0.01;

}  // namespace shardlora::testing
