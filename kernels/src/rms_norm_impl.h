// Backend entry points of rms_norm, called by the dispatch after it validated the arguments
// (see rms_norm.h for the contract).
#pragma once

#include "shardlora/kernels/rms_norm.h"

namespace shardlora::kernels {

void rms_norm_forward_cpu(const void* x, const void* weight, void* y, float* inv_rms, RmsNormShape shape, float eps,
                          DType dtype);
void rms_norm_backward_cpu(const void* grad_y, const void* x, const void* weight, const float* inv_rms, void* grad_x,
                           float* grad_weight, RmsNormShape shape, DType dtype);
void rms_norm_forward_cuda(const void* x, const void* weight, void* y, float* inv_rms, RmsNormShape shape, float eps,
                           DType dtype, Stream stream);
void rms_norm_backward_cuda(const void* grad_y, const void* x, const void* weight, const float* inv_rms, void* grad_x,
                            float* grad_weight, RmsNormShape shape, DType dtype, Stream stream);

}  // namespace shardlora::kernels
