// Backend entry points of quantize_4bit, called after the dispatch validated the arguments,
// and the per-value rounding they share.
#pragma once

#include "common/quantize_value.h"
#include "shardlora/kernels/quantize_4bit.h"

namespace shardlora::kernels {

void quantize_4bit_cpu(const void* input, DType input_dtype, const Quantized4bit& out);
void quantize_4bit_cuda(const void* input, DType input_dtype, const Quantized4bit& out, Stream stream);

// The code of one scaled value for a 4-bit type (host and device).
SHARDLORA_HOST_DEVICE inline uint8_t quantize_4bit_value(QuantType type, float scaled) {
  return type == QuantType::NF4 ? quantize_nf4_value(scaled) : quantize_fp4_value(scaled);
}

}  // namespace shardlora::kernels
