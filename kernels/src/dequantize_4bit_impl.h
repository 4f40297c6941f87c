// Backend entry points of dequantize_4bit, called by the dispatch after it validated the
// arguments (see dequantize_4bit.h for the contract).
#pragma once

#include "shardlora/kernels/dequantize_4bit.h"

namespace shardlora::kernels {

void dequantize_4bit_cpu(const Packed4bit& in, void* out, DType out_dtype);
void dequantize_4bit_cuda(const Packed4bit& in, void* out, DType out_dtype, Stream stream);

}  // namespace shardlora::kernels
