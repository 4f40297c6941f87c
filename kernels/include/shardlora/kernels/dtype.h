// Element types the kernels read and write, with frozen ids (they appear in file headers).
#pragma once

#include <cstddef>
#include <cstdint>

namespace shardlora::kernels {

enum class DType : uint8_t {
  F32 = 0,
  F16 = 1,
  BF16 = 2,
  U8 = 3,
};

constexpr size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::U8: return 1;
  }
  return 0;
}

constexpr const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::U8: return "uint8";
  }
  return "unknown";
}

}  // namespace shardlora::kernels
