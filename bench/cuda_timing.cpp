#include "cuda_timing.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace shardlora::bench {
namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

cublasHandle_t cublas() {
  static cublasHandle_t handle = [] {
    cublasHandle_t created = nullptr;
    if (cublasCreate(&created) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate failed");
    return created;
  }();
  return handle;
}

}  // namespace

double cuda_ms_per_call(int iters, const std::function<void()>& launch) {
  launch();
  check(cudaDeviceSynchronize(), "warm-up");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  check(cudaEventRecord(start), "cudaEventRecord");
  for (int i = 0; i < iters; ++i) launch();
  check(cudaEventRecord(stop), "cudaEventRecord");
  check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / iters;
}

void cublas_gemv_bf16(const void* weight, const void* x, void* y, int rows, int cols) {
  // Row-major W[rows, cols] is column-major W^T[cols, rows]: y = op(A) x with A = W^T, op = T.
  const float one = 1.0f, zero = 0.0f;
  const cublasStatus_t status =
      cublasGemmEx(cublas(), CUBLAS_OP_T, CUBLAS_OP_N, rows, 1, cols, &one, weight, CUDA_R_16BF, cols, x, CUDA_R_16BF,
                   cols, &zero, y, CUDA_R_16BF, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasGemmEx failed: " + std::to_string(status));
}

}  // namespace shardlora::bench
