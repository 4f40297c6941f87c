// Backend entry points of swiglu, called by the dispatch after it validated the arguments
// (see swiglu.h for the contract).
#pragma once

#include "shardlora/kernels/swiglu.h"

namespace shardlora::kernels {

void swiglu_forward_cpu(const void* gate, const void* up, void* y, int64_t count, DType dtype);
void swiglu_backward_cpu(const void* grad_y, const void* gate, const void* up, void* grad_gate, void* grad_up,
                         int64_t count, DType dtype);
void swiglu_forward_cuda(const void* gate, const void* up, void* y, int64_t count, DType dtype, Stream stream);
void swiglu_backward_cuda(const void* grad_y, const void* gate, const void* up, void* grad_gate, void* grad_up,
                          int64_t count, DType dtype, Stream stream);

}  // namespace shardlora::kernels
