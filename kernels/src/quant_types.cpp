// The quant-type traits table. Values are bitsandbytes' (FORMATS.md §1.1-1.2).
#include "shardlora/kernels/quant_types.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

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

// torch.linspace(start, end, steps) in float32 as ATen computes it on x86 (2.x, AVX2 or
// AVX-512 kernels): the first half counts up from start, the second half down from end,
// each value one fused multiply-add. Checked bit for bit against torch 2.11.
std::vector<float> linspace_f32(float start, float end, int steps) {
  const float step = (end - start) / static_cast<float>(steps - 1);
  std::vector<float> values(static_cast<size_t>(steps));
  const int halfway = steps / 2;
  for (int i = 0; i < steps; ++i) {
    values[i] = i < halfway ? std::fma(step, static_cast<float>(i), start)
                            : std::fma(-step, static_cast<float>(steps - i - 1), end);
  }
  return values;
}

// bitsandbytes create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): per decade
// 10^(i-6), i = 0..6, the midpoints of linspace(0.1, 1, 2^i + 1) (2^(i+1) + 1 unsigned),
// mirrored when signed; plus 0 and 1; sorted. fp32 arithmetic as in torch.
std::array<float, 256> make_dynamic_map(bool is_signed) {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int fraction_items = is_signed ? (1 << i) + 1 : (1 << (i + 1)) + 1;
    const std::vector<float> boundaries = linspace_f32(0.1f, 1.0f, fraction_items);
    // Python computes 10 ** (i - 6) in double; torch multiplies a float32 tensor by it as float32.
    const float decade = static_cast<float>(std::pow(10.0, i - 6));
    for (int j = 0; j + 1 < fraction_items; ++j) {
      const float mean = (boundaries[j] + boundaries[j + 1]) / 2.0f;
      data.push_back(decade * mean);
      if (is_signed) data.push_back(-decade * mean);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::array<float, 256> map{};
  SHARDLORA_CHECK(data.size() == map.size(), "dynamic map has ", data.size(), " entries");
  std::sort(data.begin(), data.end());
  std::copy(data.begin(), data.end(), map.begin());
  return map;
}

const QuantTypeTraits* traits_table() {
  static const std::array<float, 256> dynamic_signed = make_dynamic_map(true);
  static const std::array<float, 256> dynamic_unsigned = make_dynamic_map(false);
  static const QuantTypeTraits table[kQuantTypeCount] = {
      /* NF4 */ {"nf4", 4, 16, kNf4Code, 7},
      /* FP4 */ {"fp4", 4, 16, kFp4Code, 0},
      /* DYNAMIC8_SIGNED */ {"dynamic", 8, 256, dynamic_signed.data(), 127},
      /* DYNAMIC8_UNSIGNED */ {"dynamic_unsigned", 8, 256, dynamic_unsigned.data(), 0},
  };
  return table;
}

}  // namespace

const QuantTypeTraits& quant_type_traits(QuantType type) {
  const auto index = static_cast<int>(type);
  SHARDLORA_CHECK(index >= 0 && index < kQuantTypeCount, "unknown quant type id ", index);
  return traits_table()[index];
}

bool parse_quant_type(const char* name, QuantType* type) {
  for (int index = 0; index < kQuantTypeCount; ++index) {
    if (std::strcmp(name, traits_table()[index].name) == 0) {
      *type = static_cast<QuantType>(index);
      return true;
    }
  }
  return false;
}

}  // namespace shardlora::kernels
