// The quant-type traits table. Values are bitsandbytes' (FORMATS.md §1.1-1.2).
#include "shardlora/kernels/quant_types.h"

#include <cstring>

#include "shardlora/kernels/check.h"

namespace shardlora::kernels {
namespace {

// bitsandbytes get_4bit_type("nf4"); the same bits as csrc/kernels.cu nf4_dequantization_lut.
constexpr float kNf4Code[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

// bitsandbytes get_4bit_type("fp4"): the raw E2M1 values in bit-pattern order, divided in
// fp32 by their absolute maximum (12), exactly as torch divides them.
constexpr float kFp4Code[16] = {
    0.0f / 12.0f,  0.0625f / 12.0f,  8.0f / 12.0f,  12.0f / 12.0f,
    4.0f / 12.0f,  6.0f / 12.0f,     2.0f / 12.0f,  3.0f / 12.0f,
    -0.0f / 12.0f, -0.0625f / 12.0f, -8.0f / 12.0f, -12.0f / 12.0f,
    -4.0f / 12.0f, -6.0f / 12.0f,    -2.0f / 12.0f, -3.0f / 12.0f,
};

constexpr QuantTypeTraits kTraits[kQuantTypeCount] = {
    /* NF4 */ {"nf4", 4, 16, kNf4Code, 7},
    /* FP4 */ {"fp4", 4, 16, kFp4Code, 0},
};

}  // namespace

const QuantTypeTraits& quant_type_traits(QuantType type) {
  const auto index = static_cast<int>(type);
  SHARDLORA_CHECK(index >= 0 && index < kQuantTypeCount, "unknown quant type id ", index);
  return kTraits[index];
}

bool parse_quant_type(const char* name, QuantType* type) {
  for (int index = 0; index < kQuantTypeCount; ++index) {
    if (std::strcmp(name, kTraits[index].name) == 0) {
      *type = static_cast<QuantType>(index);
      return true;
    }
  }
  return false;
}

}  // namespace shardlora::kernels
