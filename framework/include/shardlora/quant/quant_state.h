// A 4-bit blockwise-quantized weight and its bitsandbytes serialization (FORMATS.md §1.5,
// §1.7): what a frozen base Linear holds, and what a pre-quantized HF checkpoint stores:
//   X.weight                                  uint8 [(n+1)/2, 1] packed codes
//   X.weight.absmax                           float32 [blocks], or uint8 when nested
//   X.weight.quant_map                        float32 [16]
//   X.weight.nested_absmax / nested_quant_map float32 [ceil(blocks/256)] / [256]   (nested only)
//   X.weight.quant_state.bitsandbytes__nf4    uint8: json.dumps of the non-tensor fields
#pragma once

#include <torch/types.h>

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "shardlora/kernels/quant_types.h"

namespace shardlora::quant {

struct QuantConfig {
  kernels::QuantType type = kernels::QuantType::NF4;
  int64_t blocksize = 64;
  bool double_quant = true;  // bnb_4bit_use_double_quant / compress_statistics
};

struct QuantState {
  kernels::QuantType type = kernels::QuantType::NF4;
  int64_t blocksize = 64;
  std::vector<int64_t> shape;          // of the original weight, e.g. [out, in]
  c10::ScalarType dtype = c10::ScalarType::BFloat16;  // of the original weight
  torch::Tensor codes;                 // uint8 [(n+1)/2, 1]
  torch::Tensor absmax;                // float32 [blocks], or uint8 [blocks] when nested
  torch::Tensor code;                  // float32 [16]
  bool nested = false;
  torch::Tensor nested_absmax;         // float32 [ceil(blocks / nested_blocksize)]
  torch::Tensor nested_code;           // float32 [256], on the CPU
  int64_t nested_blocksize = 256;
  float nested_offset = 0.0f;

  int64_t numel() const;
  int64_t blocks() const { return (numel() + blocksize - 1) / blocksize; }
  // Bytes of every tensor the serialized form holds (the JSON excluded).
  int64_t storage_bytes() const;
};

// What quantize() sets that does not depend on the weight's values: type, block sizes,
// shape, dtype, the code tables (`code` on `device`); codes and absmax left undefined.
QuantState state_layout(const QuantConfig& config, std::vector<int64_t> shape, c10::ScalarType dtype, torch::Device device);

// Quantizes a float32/float16/bfloat16 weight on its own device. Throws if it holds NaN or
// Inf (naming the first bad block).
QuantState quantize(const torch::Tensor& weight, const QuantConfig& config);

// Throws the error quantize() gives when a block of the weight holds NaN or Inf: `absmax`
// holds the fp32 scales of blocks starting at element `first_element`.
void check_finite_absmax(const torch::Tensor& absmax, int64_t blocksize, int64_t first_element);

// The fp32 absmax per block (nested absmax expanded), on the state's device.
torch::Tensor absmax_fp32(const QuantState& state);

// The weight back in `dtype` (default: the original dtype), with the original shape.
torch::Tensor dequantize(const QuantState& state, std::optional<c10::ScalarType> dtype = std::nullopt);

// json.dumps of the non-tensor fields, byte for byte as bitsandbytes writes it.
std::string quant_state_json(const QuantState& state);

// The tensors of the serialized form, named after `weight_name` ("model.layers.0.mlp.up_proj.weight").
std::vector<std::pair<std::string, torch::Tensor>> to_bnb_tensors(const QuantState& state,
                                                                  const std::string& weight_name);

// Finds a tensor of a checkpoint by full name; std::nullopt when absent.
using TensorLookup = std::function<std::optional<torch::Tensor>(const std::string& name)>;

// Rebuilds a state from bnb-serialized tensors, validating every shape, dtype and field
// against the JSON; errors name `label` (the file) and the tensor. The packed codes may be
// stored as any dtype (bnb_4bit_quant_storage): the bytes are what counts.
QuantState from_bnb_tensors(const std::string& weight_name, const TensorLookup& lookup, const std::string& label);

// Whether `name` is the packed weight of a bnb 4-bit Linear in this lookup (its
// quant_state.bitsandbytes__* tensor exists).
bool is_bnb_4bit_weight(const std::string& name, const TensorLookup& lookup);

// Python's repr() of a float: the shortest text that reads back to the same double,
// in fixed notation for exponents -4..15 and exponential otherwise ("1e-05", "0.0123").
std::string python_float_repr(double value);

}  // namespace shardlora::quant
