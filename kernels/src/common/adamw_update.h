// The per-element AdamW update shared by every backend (order in adamw.h). On the device
// each product, sum, quotient and root is rounded on its own (no FMA), as on the host,
// where the kernels library builds with -ffp-contract=off.
#pragma once

#include <cmath>

#include "shardlora/kernels/adamw.h"
#include "shardlora/kernels/half_float.h"

namespace shardlora::kernels {

#ifdef __CUDA_ARCH__
#define SHARDLORA_MUL(a, b) __fmul_rn(a, b)
#define SHARDLORA_ADD(a, b) __fadd_rn(a, b)
#define SHARDLORA_SUB(a, b) __fsub_rn(a, b)
#define SHARDLORA_DIV(a, b) __fdiv_rn(a, b)
#define SHARDLORA_SQRT(a) __fsqrt_rn(a)
#else
#define SHARDLORA_MUL(a, b) ((a) * (b))
#define SHARDLORA_ADD(a, b) ((a) + (b))
#define SHARDLORA_SUB(a, b) ((a) - (b))
#define SHARDLORA_DIV(a, b) ((a) / (b))
#define SHARDLORA_SQRT(a) std::sqrt(a)
#endif

SHARDLORA_HOST_DEVICE inline void adamw_update(float& p, float& m, float& v, float g, const AdamWScalars& s) {
  g = SHARDLORA_MUL(g, s.grad_scale);
  p = SHARDLORA_MUL(p, s.decay);
  m = SHARDLORA_ADD(SHARDLORA_MUL(m, s.beta1), SHARDLORA_MUL(g, s.one_minus_beta1));
  v = SHARDLORA_ADD(SHARDLORA_MUL(v, s.beta2), SHARDLORA_MUL(SHARDLORA_MUL(g, g), s.one_minus_beta2));
  const float denom = SHARDLORA_ADD(SHARDLORA_DIV(SHARDLORA_SQRT(v), s.sqrt_bias_correction2), s.eps);
  p = SHARDLORA_SUB(p, SHARDLORA_MUL(s.step_size, SHARDLORA_DIV(m, denom)));
}

}  // namespace shardlora::kernels
