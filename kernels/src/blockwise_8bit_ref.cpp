// Scalar oracles for the blockwise 8-bit ops.
#include <algorithm>
#include <cmath>

#include "common/quantize_value.h"
#include "shardlora/kernels/blockwise_8bit.h"

namespace shardlora::kernels {

void quantize_8bit_blockwise_ref(const float* input, float shift, const Blockwise8bit& shape, uint8_t* codes,
                                 float* absmax) {
  const float* map = shape.table();
  for (int64_t first = 0; first < shape.numel; first += shape.blocksize) {
    const int64_t last = std::min(first + shape.blocksize, shape.numel);
    float block_absmax = 0.0f;
    bool finite = true;
    for (int64_t i = first; i < last; ++i) {
      const float value = input[i] - shift;
      finite = finite && std::isfinite(value);
      block_absmax = std::max(block_absmax, std::fabs(value));
    }
    absmax[first / shape.blocksize] = finite ? block_absmax : NAN;
    const float scale = reciprocal_scale(block_absmax);
    for (int64_t i = first; i < last; ++i) codes[i] = quantize_8bit_value(map, (input[i] - shift) * scale);
  }
}

void dequantize_8bit_blockwise_ref(const uint8_t* codes, const float* absmax, float offset,
                                   const Blockwise8bit& shape, float* output) {
  const float* map = shape.table();
  for (int64_t i = 0; i < shape.numel; ++i) {
    const float product = map[codes[i]] * absmax[i / shape.blocksize];
    output[i] = product + offset;
  }
}

void chunk_sums_f64_ref(const float* values, int64_t count, int64_t chunk, double* sums) {
  for (int64_t first = 0; first < count; first += chunk) {
    double sum = 0.0;
    for (int64_t i = first; i < std::min(first + chunk, count); ++i) sum += values[i];
    sums[first / chunk] = sum;
  }
}

}  // namespace shardlora::kernels
