// Blockwise 4-bit dequantization in the bitsandbytes format (FORMATS.md §1.3-1.4):
//   out[i] = code[q_i] * absmax[i / blocksize], computed in fp32, then rounded to the
//   output dtype; q_(2j) is the high nibble of byte j, q_(2j+1) its low nibble.
// Double-quantized absmax must be expanded to fp32 first.
#pragma once

#include <cstdint>

#include "shardlora/kernels/device.h"
#include "shardlora/kernels/dtype.h"
#include "shardlora/kernels/quant_types.h"

namespace shardlora::kernels {

// A 4-bit blockwise-quantized tensor, as raw pointers into memory on one device.
struct Packed4bit {
  QuantType type = QuantType::NF4;
  const uint8_t* codes = nullptr;   // (numel + 1) / 2 bytes
  const float* absmax = nullptr;    // ceil(numel / blocksize) floats
  int64_t numel = 0;
  int64_t blocksize = 64;
};

// Dispatch: runs on `device` (codes, absmax and out must live there). out_dtype is F32,
// F16 or BF16. On CUDA the work is queued on `stream` and not waited for.
void dequantize_4bit(const Packed4bit& in, void* out, DType out_dtype, Device device,
                     Stream stream = nullptr);

// Scalar oracle: one element at a time, no threads. Always built.
void dequantize_4bit_ref(const Packed4bit& in, void* out, DType out_dtype);

}  // namespace shardlora::kernels
