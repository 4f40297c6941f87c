// One fused AdamW step over a span of fp32 parameters: a single pass reads p, g, m, v and
// writes p, m, v. The update is torch::optim::AdamW's (decoupled decay first):
//   g  = g * grad_scale                              (global-norm clipping, 1 when off)
//   p  = p * decay                                   (decay = 1 - lr * weight_decay)
//   m  = m * beta1 + g * (1 - beta1)
//   v  = v * beta2 + g * g * (1 - beta2)
//   p  = p - step_size * (m / (sqrt(v) / sqrt_bias_correction2 + eps))
// with step_size = lr / (1 - beta1^t) and sqrt_bias_correction2 = sqrt(1 - beta2^t).
//
// 8-bit state follows bitsandbytes' blockwise optimizers (FORMATS.md §2.3): m as codes of
// the signed dynamic map, v of the unsigned one, each block of 256 with its fp32 absmax. A
// step dequantizes a block, updates it in fp32, takes the new absmax and requantizes
// (nearest code, bitsandbytes' dQuantize).
//
// Every backend gives the reference's bits: the CPU's SIMD span and scalar tail share one
// order of fp32 operations (no FMA contraction); CUDA uses __fmul_rn / __fadd_rn etc.
#pragma once

#include <cstdint>

#include "shardlora/kernels/device.h"

namespace shardlora::kernels {

// Per-step scalars, derived on the host from the hyper-parameters and the step number.
struct AdamWScalars {
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float one_minus_beta1 = 0.1f, one_minus_beta2 = 0.001f;  // rounded from double, as torch does
  float decay = 1.0f;
  float step_size = 0.0f;
  float sqrt_bias_correction2 = 1.0f;
  float grad_scale = 1.0f;

  // t is the 1-based step number; lr, weight_decay and the betas as the optimizer holds them.
  static AdamWScalars at_step(double lr, double beta1, double beta2, double eps, double weight_decay, int64_t t,
                              double grad_scale = 1.0);
};

struct AdamW32bitState {
  float* m;
  float* v;
};

// Blocks of kAdamW8bitBlocksize elements; the last block may be partial.
struct AdamW8bitState {
  uint8_t* m_codes;
  float* m_absmax;
  uint8_t* v_codes;
  float* v_absmax;
};

constexpr int64_t kAdamW8bitBlocksize = 256;

inline int64_t adamw_8bit_blocks(int64_t numel) { return (numel + kAdamW8bitBlocksize - 1) / kAdamW8bitBlocksize; }

// param, grad and the state all on `device`; `threads` bounds the CPU threads (0: OpenMP's
// default). CUDA work is queued on `stream`.
void adamw_step_32bit(float* param, const float* grad, AdamW32bitState state, int64_t numel, const AdamWScalars& s,
                      Device device, Stream stream = nullptr, int threads = 0);
void adamw_step_8bit(float* param, const float* grad, AdamW8bitState state, int64_t numel, const AdamWScalars& s,
                     Device device, Stream stream = nullptr, int threads = 0);

void adamw_step_32bit_ref(float* param, const float* grad, AdamW32bitState state, int64_t numel, const AdamWScalars& s);
void adamw_step_8bit_ref(float* param, const float* grad, AdamW8bitState state, int64_t numel, const AdamWScalars& s);

}  // namespace shardlora::kernels
