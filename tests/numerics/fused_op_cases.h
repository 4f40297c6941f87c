// Inputs and fp64 definitions shared by the fused kernels' tests (CPU and CUDA): RMSNorm,
// RoPE, SwiGLU and row cross-entropy.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "numerics/quantize_cases.h"
#include "shardlora/kernels/cross_entropy.h"
#include "shardlora/kernels/rms_norm.h"
#include "shardlora/kernels/rope.h"
#include "shardlora/kernels/swiglu.h"

namespace shardlora::testing {

// Row lengths around the 8-lane width and a model-sized one with a tail.
inline const std::vector<int64_t> kFusedRowLengths = {1, 2, 7, 8, 9, 31, 64, 100, 4099};

inline std::vector<float> scaled_normal_values(int64_t count, float scale, uint32_t seed) {
  std::vector<float> values = normal_values(count, seed);
  for (float& value : values) value *= scale;
  return values;
}

// The values a buffer of `dtype` holds, widened to double.
inline std::vector<double> decoded(const std::vector<uint8_t>& bytes, kernels::DType dtype, int64_t count) {
  std::vector<double> values(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    if (dtype == kernels::DType::F32) {
      float value;
      std::memcpy(&value, bytes.data() + 4 * i, 4);
      values[i] = value;
    } else {
      uint16_t bits;
      std::memcpy(&bits, bytes.data() + 2 * i, 2);
      values[i] = dtype == kernels::DType::F16 ? kernels::f16_bits_to_float(bits) : kernels::bf16_bits_to_float(bits);
    }
  }
  return values;
}

// Targets for cross-entropy rows: mostly valid ids, some ignore_index, optionally one outside
// the vocabulary.
inline std::vector<int64_t> cross_entropy_targets(int64_t rows, int64_t vocab, bool with_invalid, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int64_t> targets(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) targets[r] = (r % 5 == 3) ? -100 : static_cast<int64_t>(rng() % vocab);
  if (with_invalid && rows > 1) targets[1] = vocab;
  return targets;
}

// Cross-entropy logits [rows, vocab], normal times scale, with two rows (when rows > 2) that
// take the running max's rarer steps: row 0 ascends, so its max rises in every group of 64;
// row 2 starts with up to 70 logits of -inf (a whole group and a part of the next) and holds
// values near -100 after them, whose e^(z - 0) would underflow. Its target is its last logit.
struct CrossEntropyCase {
  std::vector<float> logits;
  std::vector<int64_t> targets;
};

inline CrossEntropyCase cross_entropy_case(int64_t rows, int64_t vocab, float scale, uint32_t seed) {
  CrossEntropyCase cases{scaled_normal_values(rows * vocab, scale, seed), cross_entropy_targets(rows, vocab, true, seed + 1)};
  if (rows <= 2) return cases;
  for (int64_t c = 0; c < vocab; ++c) cases.logits[c] = scale * (static_cast<float>(c) / static_cast<float>(vocab) - 0.5f);
  float* row = cases.logits.data() + 2 * vocab;
  const int64_t infinite = std::min<int64_t>(70, vocab - 1);
  for (int64_t c = 0; c < vocab; ++c) row[c] = c < infinite ? -INFINITY : row[c] - 100.0f;
  cases.targets[2] = vocab - 1;
  return cases;
}

// fp64 definitions (no intermediate rounding), for the references' own accuracy tests.
inline double silu64(double g) { return g / (1.0 + std::exp(-g)); }
inline double sigmoid64(double g) { return 1.0 / (1.0 + std::exp(-g)); }

}  // namespace shardlora::testing
