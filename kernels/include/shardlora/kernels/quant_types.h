// Quantization types and their traits table (ggml-style). The numeric ids are frozen: they
// are written into files. A removed type keeps its id as a comment; ids are never reused.
#pragma once

#include <cstdint>

#include "shardlora/kernels/check.h"

namespace shardlora::kernels {

enum class QuantType : uint8_t {
  NF4 = 0,                // bitsandbytes NormalFloat4: 16 quantiles of N(0,1), scaled to [-1, 1]
  FP4 = 1,                // bitsandbytes E2M1 in bit-pattern order, sign in bit 3
  DYNAMIC8_SIGNED = 2,    // bitsandbytes create_dynamic_map(signed=True): double-quant absmax, Adam m
  DYNAMIC8_UNSIGNED = 3,  // create_dynamic_map(signed=False): Adam v
};
constexpr int kQuantTypeCount = 4;

struct QuantTypeTraits {
  const char* name;      // as bitsandbytes spells it: "nf4", "fp4", "dynamic", "dynamic_unsigned"
  int bits;              // bits per code
  int code_count;        // entries in `code`
  const float* code;     // dequantized value of each code, index = code; 8-bit maps are sorted
  uint8_t zero_code;     // the code of 0.0, used to pad odd element counts
};

const QuantTypeTraits& quant_type_traits(QuantType type);

// Accepts the names above (bitsandbytes and transformers spell 4-bit types "nf4" / "fp4").
// Returns false for anything else.
bool parse_quant_type(const char* name, QuantType* type);

// Blocksizes bitsandbytes accepts for 4-bit types: powers of two from 32 to 4096.
constexpr bool is_valid_4bit_blocksize(int64_t blocksize) {
  return blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0;
}

}  // namespace shardlora::kernels
