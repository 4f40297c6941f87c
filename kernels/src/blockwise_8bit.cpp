// Dispatch for the blockwise 8-bit ops, and the host-side offset.
#include "shardlora/kernels/blockwise_8bit.h"

#include "blockwise_8bit_impl.h"

namespace shardlora::kernels {
namespace {

void check_blockwise_8bit(const char* op, const Blockwise8bit& shape) {
  const auto& traits = quant_type_traits(shape.map);
  SHARDLORA_CHECK(traits.bits == 8, op, ": ", traits.name, " is not an 8-bit map");
  SHARDLORA_CHECK(shape.blocksize >= 64 && shape.blocksize <= 4096 && (shape.blocksize & (shape.blocksize - 1)) == 0,
                  op, ": blocksize ", shape.blocksize, " is not a power of two in [64, 4096]");
  SHARDLORA_CHECK(shape.numel >= 0, op, ": negative element count ", shape.numel);
}

}  // namespace

void quantize_8bit_blockwise(const float* input, float shift, const Blockwise8bit& shape, uint8_t* codes,
                             float* absmax, Device device, Stream stream) {
  check_blockwise_8bit("quantize_8bit_blockwise", shape);
  if (shape.numel == 0) return;
  SHARDLORA_CHECK(input && codes && absmax, "quantize_8bit_blockwise: null buffer");
  if (device.type == DeviceType::CPU) {
    quantize_8bit_blockwise_cpu(input, shift, shape, codes, absmax);
  } else {
    quantize_8bit_blockwise_cuda(input, shift, shape, codes, absmax, stream);
  }
}

void dequantize_8bit_blockwise(const uint8_t* codes, const float* absmax, float offset,
                               const Blockwise8bit& shape, float* output, Device device, Stream stream) {
  check_blockwise_8bit("dequantize_8bit_blockwise", shape);
  if (shape.numel == 0) return;
  SHARDLORA_CHECK(codes && absmax && output, "dequantize_8bit_blockwise: null buffer");
  if (device.type == DeviceType::CPU) {
    dequantize_8bit_blockwise_cpu(codes, absmax, offset, shape, output);
  } else {
    dequantize_8bit_blockwise_cuda(codes, absmax, offset, shape, output, stream);
  }
}

void chunk_sums_f64(const float* values, int64_t count, int64_t chunk, double* sums, Device device,
                    Stream stream) {
  SHARDLORA_CHECK(count >= 0 && chunk > 0, "chunk_sums_f64: bad count ", count, " or chunk ", chunk);
  if (count == 0) return;
  SHARDLORA_CHECK(values && sums, "chunk_sums_f64: null buffer");
  if (device.type == DeviceType::CPU) {
    chunk_sums_f64_cpu(values, count, chunk, sums);
  } else {
    chunk_sums_f64_cuda(values, count, chunk, sums, stream);
  }
}

float absmax_mean(const double* chunk_sums, int64_t chunks, int64_t count) {
  SHARDLORA_CHECK(count > 0, "absmax_mean: no values");
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) total += chunk_sums[c];
  return static_cast<float>(total / static_cast<double>(count));
}

}  // namespace shardlora::kernels
