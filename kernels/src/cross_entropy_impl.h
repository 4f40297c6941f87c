// Backend entry points of cross_entropy_rows, called by the dispatch after it validated the
// arguments (see cross_entropy.h for the contract).
#pragma once

#include "shardlora/kernels/cross_entropy.h"

namespace shardlora::kernels {

void cross_entropy_rows_cpu(void* logits, const int64_t* targets, float* losses, CrossEntropyShape shape,
                            int64_t ignore_index, bool write_gradient, DType dtype);
void cross_entropy_rows_cuda(void* logits, const int64_t* targets, float* losses, CrossEntropyShape shape,
                             int64_t ignore_index, bool write_gradient, DType dtype, Stream stream);

}  // namespace shardlora::kernels
