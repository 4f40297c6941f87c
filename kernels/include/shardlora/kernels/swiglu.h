// SwiGLU, the gated MLP activation of Llama-family models, fused: with Hugging Face's
// roundings (act_fn(gate) rounded to the dtype, then the product rounded),
//   y = round(round(silu(g)) * u),  silu(g) = g * s,  s = 1 / (1 + e^-g)
// and its backward in fp32, each result rounded once:
//   du = round(dy * round(silu(g))),  dg = round((dy * u) * (s * (1 + g * (1 - s))))
// All buffers hold `count` elements of one dtype (F32, F16, BF16). The backward may write
// its gradients over gate and up (each element is read before it is written). e^x is
// float_math.h's exp_approx, so the CPU kernel equals the reference bit for bit.
#pragma once

#include <cstdint>

#include "shardlora/kernels/device.h"
#include "shardlora/kernels/dtype.h"

namespace shardlora::kernels {

void swiglu_forward(const void* gate, const void* up, void* y, int64_t count, DType dtype, Device device,
                    Stream stream = nullptr);
void swiglu_backward(const void* grad_y, const void* gate, const void* up, void* grad_gate, void* grad_up, int64_t count,
                     DType dtype, Device device, Stream stream = nullptr);

// Scalar oracles. Always built.
void swiglu_forward_ref(const void* gate, const void* up, void* y, int64_t count, DType dtype);
void swiglu_backward_ref(const void* grad_y, const void* gate, const void* up, void* grad_gate, void* grad_up,
                         int64_t count, DType dtype);

}  // namespace shardlora::kernels
