// Backend entry points of rope_apply, called by the dispatch after it validated the
// arguments (see rope.h for the contract).
#pragma once

#include "shardlora/kernels/rope.h"

namespace shardlora::kernels {

void rope_apply_cpu(void* x, const void* cos, const void* sin, RopeShape shape, RopeDirection direction, DType dtype);
void rope_apply_cuda(void* x, const void* cos, const void* sin, RopeShape shape, RopeDirection direction, DType dtype,
                     Stream stream);

}  // namespace shardlora::kernels
