// Blockwise 8-bit ops on the CPU, parallel over blocks / chunks. Per element the same fp32
// operations as the reference, so results are bit-identical.
#include <algorithm>

#include "blockwise_8bit_impl.h"

namespace shardlora::kernels {

void quantize_8bit_blockwise_cpu(const float* input, float shift, const Blockwise8bit& shape, uint8_t* codes,
                                 float* absmax) {
  const int64_t blocks = (shape.numel + shape.blocksize - 1) / shape.blocksize;
#pragma omp parallel for schedule(static)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t first = block * shape.blocksize;
    const Blockwise8bit one_block{shape.map, std::min(shape.blocksize, shape.numel - first), shape.blocksize, shape.code};
    quantize_8bit_blockwise_ref(input + first, shift, one_block, codes + first, absmax + block);
  }
}

void dequantize_8bit_blockwise_cpu(const uint8_t* codes, const float* absmax, float offset,
                                   const Blockwise8bit& shape, float* output) {
  const float* map = shape.table();
  const int64_t blocks = (shape.numel + shape.blocksize - 1) / shape.blocksize;
#pragma omp parallel for schedule(static)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t first = block * shape.blocksize;
    const int64_t last = std::min(first + shape.blocksize, shape.numel);
    const float scale = absmax[block];
    for (int64_t i = first; i < last; ++i) {
      const float product = map[codes[i]] * scale;  // rounded before the sum, as in the reference
      output[i] = product + offset;
    }
  }
}

void chunk_sums_f64_cpu(const float* values, int64_t count, int64_t chunk, double* sums) {
  const int64_t chunks = (count + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    chunk_sums_f64_ref(values + c * chunk, std::min(chunk, count - c * chunk), chunk, sums + c);
  }
}

}  // namespace shardlora::kernels
