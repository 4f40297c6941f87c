// One place that maps element types between libtorch, the kernels, safetensors ("BF16")
// and the names bitsandbytes / transformers write ("bfloat16").
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <string>

#include "shardlora/kernels/device.h"
#include "shardlora/kernels/dtype.h"

namespace shardlora {

// F32, F16, BF16 or U8; throws for other types.
kernels::DType to_kernels_dtype(c10::ScalarType type);

// "F32", "BF16", ... ; throws for types safetensors has no name for.
std::string safetensors_dtype_name(c10::ScalarType type);
std::optional<c10::ScalarType> scalar_type_from_safetensors(const std::string& name);

// "float32", "bfloat16", "float16", ... as torch prints them without the "torch." prefix.
std::string torch_dtype_name(c10::ScalarType type);
// Also accepts the short forms a command line uses: "bf16", "fp16", "fp32".
std::optional<c10::ScalarType> scalar_type_from_name(const std::string& name);

bool is_float_type(c10::ScalarType type);  // float32, float16 or bfloat16

// The kernels' name for the device a tensor lives on.
kernels::Device kernel_device(const at::Tensor& tensor);

}  // namespace shardlora
