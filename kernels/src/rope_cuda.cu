// rope_apply on CUDA: one thread per element pair (x1, x2) of a head, in place.
#include "common/cuda_check.h"
#include "common/load_element.h"
#include "common/output_element_cuda.cuh"
#include "rope_impl.h"

namespace shardlora::kernels {
namespace {

constexpr int kThreads = 256;

template <DType kDType>
__global__ void rope_kernel(Element<kDType>* __restrict__ x, const Element<kDType>* __restrict__ cos,
                            const Element<kDType>* __restrict__ sin, int64_t pairs, int64_t heads, int64_t half,
                            float sign) {
  using In = InputElement<kDType>;
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (pair >= pairs) return;
  const int64_t i = pair % half, head = pair / half, token = head / heads;
  Element<kDType>* base = x + head * 2 * half;
  const float c = In::to_float(cos[token * half + i]), s = sign * In::to_float(sin[token * half + i]);
  const float x1 = In::to_float(base[i]), x2 = In::to_float(base[i + half]);
  base[i] = CudaOutputElement<kDType>::from_float(x1 * c - x2 * s);
  base[i + half] = CudaOutputElement<kDType>::from_float(x2 * c + x1 * s);
}

}  // namespace

void rope_apply_cuda(void* x, const void* cos, const void* sin, RopeShape shape, RopeDirection direction, DType dtype,
                     Stream stream) {
  const int64_t half = shape.head_dim / 2, pairs = shape.tokens * shape.heads * half;
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    rope_kernel<kDType><<<static_cast<unsigned>((pairs + kThreads - 1) / kThreads), kThreads, 0,
                          static_cast<cudaStream_t>(stream)>>>(
        static_cast<Element<kDType>*>(x), static_cast<const Element<kDType>*>(cos), static_cast<const Element<kDType>*>(sin),
        pairs, shape.heads, half, direction == RopeDirection::Forward ? 1.0f : -1.0f);
  });
  SHARDLORA_CUDA_CHECK_LAUNCH();
}

}  // namespace shardlora::kernels
