// Scalar value -> code rounding, exactly as bitsandbytes' CUDA kernels do it, usable from
// host and device code so every backend produces the same bytes.
//   4-bit: the decision trees dQuantizeNF4 / dQuantizeFP4 (csrc/kernels.cu): strict ">"
//          against the published midpoints, so a value on a midpoint takes the lower code.
//          Written as a count of exceeded pivots: the same result, no branches.
//   8-bit: dQuantize<0>, a 7-step binary search over the 256-entry sorted map, then a
//          comparison with the fp32 midpoint to the neighbour on x's side (a tie keeps the
//          search's final pivot).
#pragma once

#include <cmath>
#include <cstdint>

#include "shardlora/kernels/half_float.h"

namespace shardlora::kernels {

// The 15 NF4 pivots and the 7 FP4 magnitude pivots, ascending (the SIMD kernels compare
// against the same lists).
#define SHARDLORA_NF4_PIVOTS                                                                         \
  -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,           \
      -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,    \
      0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,            \
      0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f
#define SHARDLORA_FP4_MAGNITUDE_PIVOTS 0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f
// FP4 codes by increasing magnitude: 0, 1, 6, 7, 4, 5, 2, 3 (one nibble each).
constexpr uint32_t kFp4CodesByMagnitude = 0x32547610u;

SHARDLORA_HOST_DEVICE inline uint8_t quantize_nf4_value(float x) {
  constexpr float pivots[] = {SHARDLORA_NF4_PIVOTS};
  uint8_t code = 0;
  for (const float pivot : pivots) code += x > pivot;
  return code;
}

SHARDLORA_HOST_DEVICE inline uint8_t quantize_fp4_value(float x) {
  constexpr float pivots[] = {SHARDLORA_FP4_MAGNITUDE_PIVOTS};
  const uint32_t sign = x < 0 ? 0b1000u : 0u;
  const float magnitude = fabsf(x);
  uint32_t rank = 0;
  for (const float pivot : pivots) rank += magnitude > pivot;
  return static_cast<uint8_t>(((kFp4CodesByMagnitude >> (4 * rank)) & 0xfu) | sign);
}

// `code` is a sorted 256-entry map (the dynamic maps are sorted).
SHARDLORA_HOST_DEVICE inline uint8_t quantize_8bit_value(const float* code, float x) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float value = code[pivot];
  for (int step = 64; step > 0; step >>= 1) {
    if (x > value) {
      lower_pivot = pivot;
      lower = value;
      pivot += step;
    } else {
      upper_pivot = pivot;
      upper = value;
      pivot -= step;
    }
    value = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (x > value) return static_cast<uint8_t>(x > (upper + value) * 0.5f ? upper_pivot : pivot);
  return static_cast<uint8_t>(x < (lower + value) * 0.5f ? lower_pivot : pivot);
}

// bitsandbytes scales by the reciprocal. An all-zero block has absmax 0: scale by 0 so its
// values take the zero code (bitsandbytes' CUDA kernel would multiply 0 by inf here).
SHARDLORA_HOST_DEVICE inline float reciprocal_scale(float absmax) {
  return absmax > 0.0f ? 1.0f / absmax : 0.0f;
}

}  // namespace shardlora::kernels
