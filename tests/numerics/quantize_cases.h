// Inputs and helpers shared by the quantization tests (CPU and CUDA).
#pragma once

#include <cstring>
#include <random>
#include <vector>

#include "numerics/dequantize_4bit_cases.h"
#include "shardlora/kernels/half_float.h"
#include "shardlora/kernels/quantize_4bit.h"

namespace shardlora::testing {

inline std::vector<float> normal_values(int64_t numel, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(static_cast<size_t>(numel));
  for (auto& value : values) value = normal(rng);
  return values;
}

// Values encoded in a float dtype (F32 exactly, F16 / BF16 rounded to nearest even), as raw bytes.
inline std::vector<uint8_t> encode(const std::vector<float>& values, kernels::DType dtype) {
  std::vector<uint8_t> bytes(values.size() * kernels::dtype_size(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == kernels::DType::F32) {
      std::memcpy(bytes.data() + 4 * i, &values[i], 4);
    } else {
      const uint16_t bits = dtype == kernels::DType::F16 ? kernels::float_to_f16_bits(values[i])
                                                         : kernels::float_to_bf16_bits(values[i]);
      std::memcpy(bytes.data() + 2 * i, &bits, 2);
    }
  }
  return bytes;
}

// N(0,1) values (times a per-position scale spread over decades, and some all-zero
// blocks) encoded in `dtype`, as raw bytes.
inline std::vector<uint8_t> encoded_normal_values(int64_t numel, kernels::DType dtype, uint32_t seed) {
  auto values = normal_values(numel, seed);
  for (int64_t i = 0; i < numel; ++i) {
    if ((i / 64) % 5 == 2) values[i] = 0.0f;
    values[i] *= std::exp2(static_cast<float>((i / 97) % 20) - 10.0f);
  }
  return encode(values, dtype);
}

struct Quantized {
  std::vector<uint8_t> codes;
  std::vector<float> absmax;
  bool operator==(const Quantized& other) const {
    return codes == other.codes && absmax.size() == other.absmax.size() &&
           std::memcmp(absmax.data(), other.absmax.data(), absmax.size() * sizeof(float)) == 0;
  }
  kernels::Packed4bit view(kernels::QuantType type, int64_t numel, int64_t blocksize) const {
    return {type, codes.data(), absmax.data(), numel, blocksize};
  }
};

enum class Backend { Reference, Cpu };

inline Quantized quantize_with(const void* input, kernels::DType dtype, kernels::QuantType type, int64_t numel,
                               int64_t blocksize, Backend backend) {
  Quantized result;
  result.codes.assign(static_cast<size_t>((numel + 1) / 2), 0);
  result.absmax.assign(static_cast<size_t>((numel + blocksize - 1) / blocksize), 0.0f);
  const kernels::Quantized4bit out{type, result.codes.data(), result.absmax.data(), numel, blocksize};
  if (backend == Backend::Reference) {
    kernels::quantize_4bit_ref(input, dtype, out);
  } else {
    kernels::quantize_4bit(input, dtype, out, kernels::Device::cpu());
  }
  return result;
}

// Quantizes fp32 values with the CPU kernel (for tests that are not about the backends).
inline Quantized quantize_f32(kernels::QuantType type, const std::vector<float>& values, int64_t blocksize) {
  return quantize_with(values.data(), kernels::DType::F32, type, static_cast<int64_t>(values.size()), blocksize,
                       Backend::Cpu);
}

}  // namespace shardlora::testing
