// rms_norm on CUDA: one 256-thread block per row, fp32 accumulation, a block reduction for
// the row's sum; the weight gradient has one thread per column summing the rows in order.
#include "common/cuda_check.h"
#include "common/load_element.h"
#include "common/output_element_cuda.cuh"
#include "common/row_reduce_cuda.cuh"
#include "rms_norm_impl.h"

namespace shardlora::kernels {
namespace {

template <DType kDType>
__global__ void forward_kernel(const Element<kDType>* __restrict__ x, const Element<kDType>* __restrict__ w,
                               Element<kDType>* __restrict__ y, float* __restrict__ inv_rms, int64_t cols, float eps) {
  using In = InputElement<kDType>;
  __shared__ float scratch[kRowThreads / 32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += kRowThreads) {
    const float v = In::to_float(x[base + c]);
    sum += v * v;
  }
  const float scale = rsqrtf(block_sum(sum, scratch) / static_cast<float>(cols) + eps);
  if (threadIdx.x == 0) inv_rms[blockIdx.x] = scale;
  for (int64_t c = threadIdx.x; c < cols; c += kRowThreads) {
    const float normed = rounded<kDType>(In::to_float(x[base + c]) * scale);
    y[base + c] = CudaOutputElement<kDType>::from_float(In::to_float(w[c]) * normed);
  }
}

template <DType kDType>
__global__ void backward_kernel(const Element<kDType>* __restrict__ dy, const Element<kDType>* __restrict__ x,
                                const Element<kDType>* __restrict__ w, const float* __restrict__ inv_rms,
                                Element<kDType>* __restrict__ dx, int64_t cols) {
  using In = InputElement<kDType>;
  __shared__ float scratch[kRowThreads / 32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  const float scale = inv_rms[blockIdx.x];
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += kRowThreads) {
    sum += In::to_float(dy[base + c]) * In::to_float(w[c]) * (In::to_float(x[base + c]) * scale);
  }
  const float mean = block_sum(sum, scratch) / static_cast<float>(cols);
  for (int64_t c = threadIdx.x; c < cols; c += kRowThreads) {
    const float g = In::to_float(dy[base + c]) * In::to_float(w[c]);
    dx[base + c] = CudaOutputElement<kDType>::from_float(scale * (g - In::to_float(x[base + c]) * scale * mean));
  }
}

template <DType kDType>
__global__ void weight_grad_kernel(const Element<kDType>* __restrict__ dy, const Element<kDType>* __restrict__ x,
                                   const float* __restrict__ inv_rms, int64_t rows, int64_t cols, float* __restrict__ dw) {
  using In = InputElement<kDType>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float sum = 0.0f;
  for (int64_t r = 0; r < rows; ++r) sum += In::to_float(dy[r * cols + c]) * rounded<kDType>(In::to_float(x[r * cols + c]) * inv_rms[r]);
  dw[c] = sum;
}

}  // namespace

void rms_norm_forward_cuda(const void* x, const void* weight, void* y, float* inv_rms, RmsNormShape shape, float eps,
                           DType dtype, Stream stream) {
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    forward_kernel<kDType><<<static_cast<unsigned>(shape.rows), kRowThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const Element<kDType>*>(x), static_cast<const Element<kDType>*>(weight), static_cast<Element<kDType>*>(y),
        inv_rms, shape.cols, eps);
  });
  SHARDLORA_CUDA_CHECK_LAUNCH();
}

void rms_norm_backward_cuda(const void* grad_y, const void* x, const void* weight, const float* inv_rms, void* grad_x,
                            float* grad_weight, RmsNormShape shape, DType dtype, Stream stream) {
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    const auto* dy = static_cast<const Element<kDType>*>(grad_y);
    const auto* xs = static_cast<const Element<kDType>*>(x);
    backward_kernel<kDType><<<static_cast<unsigned>(shape.rows), kRowThreads, 0, cuda_stream>>>(
        dy, xs, static_cast<const Element<kDType>*>(weight), inv_rms, static_cast<Element<kDType>*>(grad_x), shape.cols);
    SHARDLORA_CUDA_CHECK_LAUNCH();
    if (!grad_weight) return;
    weight_grad_kernel<kDType><<<static_cast<unsigned>((shape.cols + 255) / 256), 256, 0, cuda_stream>>>(
        dy, xs, inv_rms, shape.rows, shape.cols, grad_weight);
    SHARDLORA_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace shardlora::kernels
