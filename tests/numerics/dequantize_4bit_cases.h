// Random 4-bit tensors of awkward sizes, shared by the CPU and CUDA dequantize tests so
// both backends face the same cases.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "shardlora/kernels/dequantize_4bit.h"

namespace shardlora::testing {

struct Random4bitTensor {
  std::vector<uint8_t> codes;
  std::vector<float> absmax;
  kernels::Packed4bit view(kernels::QuantType type, int64_t numel, int64_t blocksize) const {
    return {type, codes.data(), absmax.data(), numel, blocksize};
  }
};

inline Random4bitTensor make_random_4bit(int64_t numel, int64_t blocksize, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  // Scales over several decades, including 0 (an all-zero block) and subnormal-range
  // products that stress the half/bfloat16 rounding.
  std::uniform_real_distribution<float> log_scale(-30.0f, 4.0f);
  Random4bitTensor tensor;
  tensor.codes.resize(static_cast<size_t>((numel + 1) / 2));
  for (auto& code : tensor.codes) code = static_cast<uint8_t>(byte(rng));
  tensor.absmax.resize(static_cast<size_t>((numel + blocksize - 1) / blocksize));
  for (size_t i = 0; i < tensor.absmax.size(); ++i) {
    tensor.absmax[i] = (i % 7 == 3) ? 0.0f : std::exp2(log_scale(rng));
  }
  return tensor;
}

// Sizes: empty, below one block, odd, one element past a block, many blocks with a tail.
inline const std::vector<int64_t> kAwkwardSizes = {0, 1, 2, 7, 31, 63, 64, 65, 255, 1000, 4097, 66537};

inline const kernels::DType kFloatDTypes[] = {kernels::DType::F32, kernels::DType::F16, kernels::DType::BF16};
inline const kernels::QuantType kQuant4bitTypes[] = {kernels::QuantType::NF4, kernels::QuantType::FP4};

inline std::vector<uint8_t> output_buffer(int64_t numel, kernels::DType dtype) {
  // One guard byte pattern past the end catches writes beyond numel.
  return std::vector<uint8_t>(static_cast<size_t>(numel) * kernels::dtype_size(dtype) + 16, 0xA5);
}

}  // namespace shardlora::testing
