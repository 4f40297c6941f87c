// Random AdamW problems for the kernel tests (CPU and CUDA): parameters, gradients and a
// state that has already seen some steps, with per-step scalars that exercise clipping and
// weight decay.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "shardlora/kernels/adamw.h"

namespace shardlora::testing {

struct AdamWProblem {
  std::vector<float> param, grad, m, v;
  std::vector<uint8_t> m_codes, v_codes;  // 8-bit state
  std::vector<float> m_absmax, v_absmax;

  kernels::AdamW32bitState state32() { return {m.data(), v.data()}; }
  kernels::AdamW8bitState state8() { return {m_codes.data(), m_absmax.data(), v_codes.data(), v_absmax.data()}; }
};

inline AdamWProblem random_adamw_problem(int64_t numel, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> byte(0, 255);
  const int64_t blocks = kernels::adamw_8bit_blocks(numel);
  AdamWProblem problem;
  for (int64_t i = 0; i < numel; ++i) {
    problem.param.push_back(normal(rng));
    problem.grad.push_back(normal(rng) * 1e-2f);
    problem.m.push_back(normal(rng) * 1e-3f);
    problem.v.push_back(std::fabs(normal(rng)) * 1e-5f);
    problem.m_codes.push_back(static_cast<uint8_t>(byte(rng)));
    problem.v_codes.push_back(static_cast<uint8_t>(byte(rng)));
  }
  for (int64_t b = 0; b < blocks; ++b) {
    problem.m_absmax.push_back(std::fabs(normal(rng)) * 1e-3f);
    problem.v_absmax.push_back(std::fabs(normal(rng)) * 1e-5f);
  }
  return problem;
}

// Scalars of step t of a run with clipping coefficient 0.7 and weight decay.
inline kernels::AdamWScalars adamw_scalars(int64_t t) {
  return kernels::AdamWScalars::at_step(3e-3, 0.9, 0.999, 1e-8, 0.01, t, 0.7);
}

inline const std::vector<int64_t> kAdamWSizes = {1, 3, 4, 255, 256, 257, 4097, 16385, 100003};

}  // namespace shardlora::testing
