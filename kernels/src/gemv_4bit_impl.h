// Backend entry points of gemv_4bit, called after validation.
#pragma once

#include "shardlora/kernels/gemv_4bit.h"

namespace shardlora::kernels {

void gemv_4bit_cpu(const Packed4bit& weight, Gemv4bitShape shape, const void* x, DType x_dtype, void* y,
                   DType y_dtype);
void gemv_4bit_cuda(const Packed4bit& weight, Gemv4bitShape shape, const void* x, DType x_dtype, void* y,
                    DType y_dtype, Stream stream);

}  // namespace shardlora::kernels
