// Blockwise 8-bit quantization with a 256-entry sorted map (bitsandbytes quantize_blockwise
// / dequantize_blockwise; FORMATS.md §1.5-1.6). Used for double quantization of 4-bit
// absmax (signed dynamic map, blocksize 256) and for 8-bit optimizer state.
//   quantize:   v_i = x_i - shift; absmax[b] = max |v| over block b;
//               code_i = dQuantize(map, v_i * (1 / absmax[b]))
//   dequantize: y_i = map[code_i] * absmax[b] + offset   (product rounded, then the sum)
// Double quantization: shift = offset = the mean of the 4-bit absmax (see absmax_mean).
#pragma once

#include <cstdint>

#include "shardlora/kernels/device.h"
#include "shardlora/kernels/quant_types.h"

namespace shardlora::kernels {

struct Blockwise8bit {
  QuantType map = QuantType::DYNAMIC8_SIGNED;  // an 8-bit type
  int64_t numel = 0;
  int64_t blocksize = 256;                     // a power of two in [64, 4096]
  // Host pointer to 256 sorted values used instead of the map's table: a checkpoint's own
  // nested_quant_map (bitsandbytes computes its map at run time, so files may differ in an ulp).
  const float* code = nullptr;
  const float* table() const { return code ? code : quant_type_traits(map).code; }
};

void quantize_8bit_blockwise(const float* input, float shift, const Blockwise8bit& shape, uint8_t* codes,
                             float* absmax, Device device, Stream stream = nullptr);
void dequantize_8bit_blockwise(const uint8_t* codes, const float* absmax, float offset,
                               const Blockwise8bit& shape, float* output, Device device, Stream stream = nullptr);

void quantize_8bit_blockwise_ref(const float* input, float shift, const Blockwise8bit& shape, uint8_t* codes,
                                 float* absmax);
void dequantize_8bit_blockwise_ref(const uint8_t* codes, const float* absmax, float offset,
                                   const Blockwise8bit& shape, float* output);

// Sums of consecutive chunks of `chunk` values, each accumulated in fp64 in index order:
// sums[c] = x[c*chunk] + ... + x[min((c+1)*chunk, count) - 1]. A fixed order makes the
// result identical on every device and on every rank that holds the same chunks.
void chunk_sums_f64(const float* values, int64_t count, int64_t chunk, double* sums, Device device,
                    Stream stream = nullptr);
void chunk_sums_f64_ref(const float* values, int64_t count, int64_t chunk, double* sums);

// The double-quantization offset from chunk sums (added in order, on the host), rounded to
// fp32: the mean of `count` absmax values. Ranks holding different chunks gather all the
// sums and get the same offset a single process would.
float absmax_mean(const double* chunk_sums, int64_t chunks, int64_t count);

// Chunk length for double quantization: one 8-bit block of absmax.
constexpr int64_t kDoubleQuantBlocksize = 256;

}  // namespace shardlora::kernels
