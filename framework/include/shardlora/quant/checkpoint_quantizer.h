// Converts a Hugging Face checkpoint (float32/float16/bfloat16 safetensors) into the
// bitsandbytes 4-bit layout that transformers loads with load_in_4bit: the Linear weights
// of the decoder blocks quantized, every other tensor cast to the compute dtype, a
// quantization_config in config.json, the other files copied. Streams one tensor at a time
// from a memory map; shards in, same shards out.
#pragma once

#include <functional>
#include <string>

#include "shardlora/kernels/device.h"
#include "shardlora/quant/quant_state.h"

namespace shardlora::quant {

struct CheckpointQuantizeOptions {
  QuantConfig quant;
  c10::ScalarType compute_dtype = c10::ScalarType::BFloat16;
  kernels::Device device = kernels::Device::cpu();  // where the quantization runs
  bool force = false;                                // replace an existing output directory
  // Called after each tensor: tensor bytes done, tensor bytes in all, the tensor's name.
  std::function<void(uint64_t done, uint64_t total, const std::string& tensor)> on_progress;
};

struct CheckpointQuantizeReport {
  uint64_t bytes_in = 0;           // input safetensors files
  uint64_t bytes_out = 0;          // output safetensors files
  int64_t quantized_tensors = 0;
  int64_t kept_tensors = 0;
  int64_t quantized_params = 0;
  uint64_t quantized_bytes = 0;    // every serialized tensor of the quantized weights
  double bits_per_param() const {
    return quantized_params ? 8.0 * static_cast<double>(quantized_bytes) / static_cast<double>(quantized_params) : 0.0;
  }
};

CheckpointQuantizeReport quantize_checkpoint(const std::string& in_dir, const std::string& out_dir,
                                             const CheckpointQuantizeOptions& options);

// Whether a checkpoint tensor is a Linear weight of a decoder block ("model.layers.N.*.weight",
// 2-D, float) and so quantized.
bool is_decoder_linear_weight(const std::string& name, size_t rank);

}  // namespace shardlora::quant
