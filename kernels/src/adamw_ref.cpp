// Scalar oracles for the AdamW step.
#include <algorithm>
#include <cmath>

#include "common/adamw_update.h"
#include "common/quantize_value.h"
#include "shardlora/kernels/quant_types.h"

namespace shardlora::kernels {

void adamw_step_32bit_ref(float* param, const float* grad, AdamW32bitState state, int64_t numel, const AdamWScalars& s) {
  for (int64_t i = 0; i < numel; ++i) adamw_update(param[i], state.m[i], state.v[i], grad[i], s);
}

void adamw_step_8bit_ref(float* param, const float* grad, AdamW8bitState state, int64_t numel, const AdamWScalars& s) {
  const float* signed_map = quant_type_traits(QuantType::DYNAMIC8_SIGNED).code;
  const float* unsigned_map = quant_type_traits(QuantType::DYNAMIC8_UNSIGNED).code;
  float m[kAdamW8bitBlocksize], v[kAdamW8bitBlocksize];
  for (int64_t first = 0; first < numel; first += kAdamW8bitBlocksize) {
    const int64_t count = std::min(kAdamW8bitBlocksize, numel - first);
    const int64_t block = first / kAdamW8bitBlocksize;
    float m_absmax = 0.0f, v_absmax = 0.0f;
    for (int64_t i = 0; i < count; ++i) {
      m[i] = signed_map[state.m_codes[first + i]] * state.m_absmax[block];
      v[i] = unsigned_map[state.v_codes[first + i]] * state.v_absmax[block];
      adamw_update(param[first + i], m[i], v[i], grad[first + i], s);
      m_absmax = std::max(m_absmax, std::fabs(m[i]));
      v_absmax = std::max(v_absmax, v[i]);
    }
    state.m_absmax[block] = m_absmax;
    state.v_absmax[block] = v_absmax;
    const float m_scale = reciprocal_scale(m_absmax), v_scale = reciprocal_scale(v_absmax);
    for (int64_t i = 0; i < count; ++i) {
      state.m_codes[first + i] = quantize_8bit_value(signed_map, m[i] * m_scale);
      state.v_codes[first + i] = quantize_8bit_value(unsigned_map, v[i] * v_scale);
    }
  }
}

}  // namespace shardlora::kernels
