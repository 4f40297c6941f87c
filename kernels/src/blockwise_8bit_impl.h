// Backend entry points of the blockwise 8-bit ops, called after validation.
#pragma once

#include "shardlora/kernels/blockwise_8bit.h"

namespace shardlora::kernels {

void quantize_8bit_blockwise_cpu(const float* input, float shift, const Blockwise8bit& shape, uint8_t* codes,
                                 float* absmax);
void dequantize_8bit_blockwise_cpu(const uint8_t* codes, const float* absmax, float offset,
                                   const Blockwise8bit& shape, float* output);
void chunk_sums_f64_cpu(const float* values, int64_t count, int64_t chunk, double* sums);

void quantize_8bit_blockwise_cuda(const float* input, float shift, const Blockwise8bit& shape, uint8_t* codes,
                                  float* absmax, Stream stream);
void dequantize_8bit_blockwise_cuda(const uint8_t* codes, const float* absmax, float offset,
                                    const Blockwise8bit& shape, float* output, Stream stream);
void chunk_sums_f64_cuda(const float* values, int64_t count, int64_t chunk, double* sums, Stream stream);

}  // namespace shardlora::kernels
