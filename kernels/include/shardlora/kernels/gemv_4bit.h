// Fused 4-bit matrix-vector product for batch-1 decoding: y = W x, where W [rows, cols] is
// stored 4-bit blockwise (row-major, flattened; FORMATS.md §3.2) and never materialized.
// Accumulation in fp32 (the reference accumulates in fp64); y rounded to y_dtype.
// cols must be a multiple of the blocksize (as bitsandbytes requires), so every
// quantization block lies inside one row. Double-quantized absmax must be expanded first.
#pragma once

#include <cstdint>

#include "shardlora/kernels/dequantize_4bit.h"

namespace shardlora::kernels {

struct Gemv4bitShape {
  int64_t rows = 0;  // output features
  int64_t cols = 0;  // input features
};

// weight.numel must equal rows * cols. x: cols elements of x_dtype; y: rows elements of
// y_dtype (F32, F16 or BF16 each).
void gemv_4bit(const Packed4bit& weight, Gemv4bitShape shape, const void* x, DType x_dtype, void* y, DType y_dtype,
               Device device, Stream stream = nullptr);

void gemv_4bit_ref(const Packed4bit& weight, Gemv4bitShape shape, const void* x, DType x_dtype, void* y,
                   DType y_dtype);

}  // namespace shardlora::kernels
