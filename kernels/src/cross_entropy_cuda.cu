// cross_entropy_rows on CUDA: one 256-thread block per row, three passes over the row (max,
// sum of exponentials, gradient) with block reductions; fp32 throughout, the device's expf.
#include <cmath>

#include "common/cuda_check.h"
#include "common/load_element.h"
#include "common/output_element_cuda.cuh"
#include "common/row_reduce_cuda.cuh"
#include "cross_entropy_impl.h"

namespace shardlora::kernels {
namespace {

template <DType kDType>
__global__ void cross_entropy_kernel(Element<kDType>* __restrict__ logits, const int64_t* __restrict__ targets,
                                     float* __restrict__ losses, int64_t vocab, int64_t ignore_index, bool write_gradient) {
  using In = InputElement<kDType>;
  using Out = CudaOutputElement<kDType>;
  __shared__ float scratch[kRowThreads / 32];
  Element<kDType>* z = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  const int64_t t = targets[blockIdx.x];
  if (t == ignore_index) {
    if (threadIdx.x == 0) losses[blockIdx.x] = 0.0f;
    if (write_gradient) {
      for (int64_t c = threadIdx.x; c < vocab; c += kRowThreads) z[c] = Out::from_float(0.0f);
    }
    return;
  }
  float m = -INFINITY;
  for (int64_t c = threadIdx.x; c < vocab; c += kRowThreads) m = fmaxf(m, In::to_float(z[c]));
  m = block_max(m, scratch);
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < vocab; c += kRowThreads) sum += expf(In::to_float(z[c]) - m);
  sum = block_sum(sum, scratch);
  const bool valid = t >= 0 && t < vocab;
  const float target_logit = valid ? In::to_float(z[t]) : NAN;
  __syncthreads();  // every thread has read z[t] before it is overwritten
  if (threadIdx.x == 0) losses[blockIdx.x] = (m + logf(sum)) - target_logit;
  if (!write_gradient) return;
  const float inverse = 1.0f / sum;
  for (int64_t c = threadIdx.x; c < vocab; c += kRowThreads) {
    const float p = expf(In::to_float(z[c]) - m) * inverse;
    z[c] = Out::from_float(valid ? (c == t ? p - 1.0f : p) : target_logit);
  }
}

}  // namespace

void cross_entropy_rows_cuda(void* logits, const int64_t* targets, float* losses, CrossEntropyShape shape,
                             int64_t ignore_index, bool write_gradient, DType dtype, Stream stream) {
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    cross_entropy_kernel<kDType><<<static_cast<unsigned>(shape.rows), kRowThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<Element<kDType>*>(logits), targets, losses, shape.vocab, ignore_index, write_gradient);
  });
  SHARDLORA_CUDA_CHECK_LAUNCH();
}

}  // namespace shardlora::kernels
