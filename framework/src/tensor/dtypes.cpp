#include "shardlora/tensor/dtypes.h"

#include "shardlora/kernels/check.h"

namespace shardlora {
namespace {

struct DTypeNames {
  c10::ScalarType type;
  const char* safetensors;
  const char* torch;
};

constexpr DTypeNames kNames[] = {
    {c10::ScalarType::Float, "F32", "float32"},   {c10::ScalarType::Half, "F16", "float16"},
    {c10::ScalarType::BFloat16, "BF16", "bfloat16"}, {c10::ScalarType::Double, "F64", "float64"},
    {c10::ScalarType::Byte, "U8", "uint8"},       {c10::ScalarType::Char, "I8", "int8"},
    {c10::ScalarType::Short, "I16", "int16"},     {c10::ScalarType::Int, "I32", "int32"},
    {c10::ScalarType::Long, "I64", "int64"},      {c10::ScalarType::Bool, "BOOL", "bool"},
};

const DTypeNames* names_of(c10::ScalarType type) {
  for (const auto& names : kNames) {
    if (names.type == type) return &names;
  }
  return nullptr;
}

}  // namespace

kernels::DType to_kernels_dtype(c10::ScalarType type) {
  switch (type) {
    case c10::ScalarType::Float: return kernels::DType::F32;
    case c10::ScalarType::Half: return kernels::DType::F16;
    case c10::ScalarType::BFloat16: return kernels::DType::BF16;
    case c10::ScalarType::Byte: return kernels::DType::U8;
    default: break;
  }
  throw Error(detail::concat("no kernel support for dtype ", c10::toString(type)));
}

std::string safetensors_dtype_name(c10::ScalarType type) {
  const DTypeNames* names = names_of(type);
  SHARDLORA_CHECK(names, "safetensors has no name for dtype ", c10::toString(type));
  return names->safetensors;
}

std::optional<c10::ScalarType> scalar_type_from_safetensors(const std::string& name) {
  for (const auto& names : kNames) {
    if (name == names.safetensors) return names.type;
  }
  return std::nullopt;
}

std::string torch_dtype_name(c10::ScalarType type) {
  const DTypeNames* names = names_of(type);
  SHARDLORA_CHECK(names, "no name for dtype ", c10::toString(type));
  return names->torch;
}

std::optional<c10::ScalarType> scalar_type_from_name(const std::string& name) {
  if (name == "bf16") return c10::ScalarType::BFloat16;
  if (name == "fp16") return c10::ScalarType::Half;
  if (name == "fp32") return c10::ScalarType::Float;
  for (const auto& names : kNames) {
    if (name == names.torch) return names.type;
  }
  return std::nullopt;
}

bool is_float_type(c10::ScalarType type) {
  return type == c10::ScalarType::Float || type == c10::ScalarType::Half || type == c10::ScalarType::BFloat16;
}

kernels::Device kernel_device(const at::Tensor& tensor) {
  return tensor.is_cuda() ? kernels::Device::cuda(tensor.get_device()) : kernels::Device::cpu();
}

}  // namespace shardlora
