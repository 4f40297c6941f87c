// Argument checks the fused ops' dispatches share.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "shardlora/kernels/check.h"
#include "shardlora/kernels/dtype.h"

namespace shardlora::kernels {

inline void check_rows(const char* op, int64_t rows, int64_t cols, DType dtype) {
  SHARDLORA_CHECK(rows >= 0 && cols > 0, op, ": shape [", rows, ", ", cols, "] needs rows >= 0 and cols > 0");
  SHARDLORA_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, op, ": dtype ",
                  dtype_name(dtype), " is not float32, float16 or bfloat16");
}

inline void check_buffers(const char* op, std::initializer_list<const void*> buffers) {
  for (const void* buffer : buffers) SHARDLORA_CHECK(buffer, op, ": null buffer");
}

}  // namespace shardlora::kernels
