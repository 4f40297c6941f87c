// Blockwise 4-bit quantization in the bitsandbytes format (FORMATS.md §1.3-1.4):
//   absmax[b] = max |x| over block b of the flattened tensor (blocksize 32..4096)
//   code_i    = nearest code of x_i * (1 / absmax[b]), a midpoint going to the lower code
//   byte j    = code_(2j) << 4 | code_(2j+1); an odd tail is padded with the zero code.
// Blocks are independent: quantizing whole blocks [b0, b1) of a tensor (input advanced by
// b0 * blocksize, outputs by b0 * blocksize / 2 bytes and b0 floats) writes exactly those
// bytes of the whole-tensor result. That is how ranks quantize their own shards.
// A block holding NaN or Inf gets absmax = NaN; callers reject such tensors.
#pragma once

#include <cstdint>

#include "shardlora/kernels/device.h"
#include "shardlora/kernels/dtype.h"
#include "shardlora/kernels/quant_types.h"

namespace shardlora::kernels {

// Where quantize_4bit writes: memory on one device.
struct Quantized4bit {
  QuantType type = QuantType::NF4;
  uint8_t* codes = nullptr;   // (numel + 1) / 2 bytes
  float* absmax = nullptr;    // ceil(numel / blocksize) floats
  int64_t numel = 0;
  int64_t blocksize = 64;
};

// input: numel elements of input_dtype (F32, F16 or BF16) on `device`.
void quantize_4bit(const void* input, DType input_dtype, const Quantized4bit& out, Device device,
                   Stream stream = nullptr);

// Scalar oracle. Always built.
void quantize_4bit_ref(const void* input, DType input_dtype, const Quantized4bit& out);

}  // namespace shardlora::kernels
