// CUDA-only helpers for the benchmarks: event timing and the cuBLAS baseline.
#pragma once

#include <functional>

namespace shardlora::bench {

// Mean milliseconds per call of `launch` (kernels queued on the default stream), timed with
// CUDA events after one warm-up call.
double cuda_ms_per_call(int iters, const std::function<void()>& launch);

// y[rows] = W[rows, cols] x with W dense bf16 on the device: cublasGemmEx (m = rows, n = 1,
// fp32 accumulation). All pointers are device pointers to bf16.
void cublas_gemv_bf16(const void* weight, const void* x, void* y, int rows, int cols);

}  // namespace shardlora::bench
