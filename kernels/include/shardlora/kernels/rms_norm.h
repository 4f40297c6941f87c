// RMSNorm over the last dimension with Hugging Face's LlamaRMSNorm semantics: each row is
// normalized in fp32, rounded to the element dtype, then scaled by the weight (the product
// rounded again):
//   inv_rms[r] = 1 / sqrt(mean_c x[r,c]^2 + eps)
//   y[r,c]     = round(w[c] * round(x[r,c] * inv_rms[r]))
// The backward treats the roundings as identity (as autograd does) and accumulates in fp32:
//   n = x * inv_rms, g = dy * w
//   dx[r,c] = inv_rms[r] * (g[r,c] - n[r,c] * mean_c(g[r,c] * n[r,c]))
//   dw[c]   = sum_r dy[r,c] * round(n[r,c])        (rows in order)
// x, w, y, dy and dx share one dtype (F32, F16, BF16); inv_rms and dw are fp32. Row sums
// follow float_math.h's lane order, so the CPU kernel equals the reference bit for bit.
#pragma once

#include <cstdint>

#include "shardlora/kernels/device.h"
#include "shardlora/kernels/dtype.h"

namespace shardlora::kernels {

struct RmsNormShape {
  int64_t rows = 0, cols = 0;
};

// Dispatch: all buffers on `device`; on CUDA queued on `stream`. inv_rms [rows] is written
// for the backward.
void rms_norm_forward(const void* x, const void* weight, void* y, float* inv_rms, RmsNormShape shape, float eps,
                      DType dtype, Device device, Stream stream = nullptr);

// grad_weight (fp32 [cols]) may be null when the weight is frozen; it is overwritten.
void rms_norm_backward(const void* grad_y, const void* x, const void* weight, const float* inv_rms, void* grad_x,
                       float* grad_weight, RmsNormShape shape, DType dtype, Device device, Stream stream = nullptr);

// Scalar oracles: one element at a time, no threads. Always built.
void rms_norm_forward_ref(const void* x, const void* weight, void* y, float* inv_rms, RmsNormShape shape, float eps,
                          DType dtype);
void rms_norm_backward_ref(const void* grad_y, const void* x, const void* weight, const float* inv_rms, void* grad_x,
                           float* grad_weight, RmsNormShape shape, DType dtype);

}  // namespace shardlora::kernels
