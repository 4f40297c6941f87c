// Dispatch for the AdamW step, and the per-step scalars.
#include "shardlora/kernels/adamw.h"

#include <cmath>

#include "adamw_impl.h"
#include "shardlora/kernels/check.h"

namespace shardlora::kernels {

AdamWScalars AdamWScalars::at_step(double lr, double beta1, double beta2, double eps, double weight_decay, int64_t t,
                                   double grad_scale) {
  SHARDLORA_CHECK(t >= 1, "AdamW: step number ", t, " must be at least 1");
  // Computed in double and rounded once, as torch::optim::AdamW rounds its double scalars.
  AdamWScalars s;
  s.beta1 = static_cast<float>(beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  s.eps = static_cast<float>(eps);
  s.decay = static_cast<float>(1.0 - lr * weight_decay);
  s.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, static_cast<double>(t))));
  s.sqrt_bias_correction2 = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, static_cast<double>(t))));
  s.grad_scale = static_cast<float>(grad_scale);
  return s;
}

void adamw_step_32bit(float* param, const float* grad, AdamW32bitState state, int64_t numel, const AdamWScalars& s,
                      Device device, Stream stream, int threads) {
  SHARDLORA_CHECK(numel >= 0, "adamw_step_32bit: negative element count ", numel);
  if (numel == 0) return;
  SHARDLORA_CHECK(param && grad && state.m && state.v, "adamw_step_32bit: null buffer");
  if (device.type == DeviceType::CPU) {
    adamw_step_32bit_cpu(param, grad, state, numel, s, threads);
  } else {
    adamw_step_32bit_cuda(param, grad, state, numel, s, stream);
  }
}

void adamw_step_8bit(float* param, const float* grad, AdamW8bitState state, int64_t numel, const AdamWScalars& s,
                     Device device, Stream stream, int threads) {
  SHARDLORA_CHECK(numel >= 0, "adamw_step_8bit: negative element count ", numel);
  if (numel == 0) return;
  SHARDLORA_CHECK(param && grad && state.m_codes && state.m_absmax && state.v_codes && state.v_absmax,
                  "adamw_step_8bit: null buffer");
  if (device.type == DeviceType::CPU) {
    adamw_step_8bit_cpu(param, grad, state, numel, s, threads);
  } else {
    adamw_step_8bit_cuda(param, grad, state, numel, s, stream);
  }
}

}  // namespace shardlora::kernels
