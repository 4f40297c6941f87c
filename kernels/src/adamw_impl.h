// Backend entry points of the AdamW step, called after validation.
#pragma once

#include "shardlora/kernels/adamw.h"

namespace shardlora::kernels {

void adamw_step_32bit_cpu(float* param, const float* grad, AdamW32bitState state, int64_t numel, const AdamWScalars& s,
                          int threads);
void adamw_step_8bit_cpu(float* param, const float* grad, AdamW8bitState state, int64_t numel, const AdamWScalars& s,
                         int threads);

void adamw_step_32bit_cuda(float* param, const float* grad, AdamW32bitState state, int64_t numel, const AdamWScalars& s,
                           Stream stream);
void adamw_step_8bit_cuda(float* param, const float* grad, AdamW8bitState state, int64_t numel, const AdamWScalars& s,
                          Stream stream);

}  // namespace shardlora::kernels
