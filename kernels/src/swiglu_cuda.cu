// swiglu on CUDA: one thread per element, fp32 in registers, the reference's formulas
// (with the device's expf, so results may differ from the reference by an ulp).
#include "common/cuda_check.h"
#include "common/load_element.h"
#include "common/output_element_cuda.cuh"
#include "swiglu_impl.h"

namespace shardlora::kernels {
namespace {

constexpr int kThreads = 256;

template <DType kDType>
__global__ void forward_kernel(const Element<kDType>* __restrict__ gate, const Element<kDType>* __restrict__ up,
                               Element<kDType>* __restrict__ y, int64_t count) {
  using In = InputElement<kDType>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= count) return;
  const float x = In::to_float(gate[i]);
  const float silu = rounded<kDType>(x * (1.0f / (1.0f + expf(-x))));
  y[i] = CudaOutputElement<kDType>::from_float(silu * In::to_float(up[i]));
}

template <DType kDType>
__global__ void backward_kernel(const Element<kDType>* __restrict__ dy, const Element<kDType>* gate,
                                const Element<kDType>* up, Element<kDType>* dg, Element<kDType>* du, int64_t count) {
  using In = InputElement<kDType>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= count) return;
  const float x = In::to_float(gate[i]), up_value = In::to_float(up[i]), grad = In::to_float(dy[i]);
  const float s = 1.0f / (1.0f + expf(-x));
  const float silu = rounded<kDType>(x * s);
  dg[i] = CudaOutputElement<kDType>::from_float((grad * up_value) * (s * (1.0f + x * (1.0f - s))));
  du[i] = CudaOutputElement<kDType>::from_float(grad * silu);
}

unsigned blocks_for(int64_t count) { return static_cast<unsigned>((count + kThreads - 1) / kThreads); }

}  // namespace

void swiglu_forward_cuda(const void* gate, const void* up, void* y, int64_t count, DType dtype, Stream stream) {
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    forward_kernel<kDType><<<blocks_for(count), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const Element<kDType>*>(gate), static_cast<const Element<kDType>*>(up), static_cast<Element<kDType>*>(y),
        count);
  });
  SHARDLORA_CUDA_CHECK_LAUNCH();
}

void swiglu_backward_cuda(const void* grad_y, const void* gate, const void* up, void* grad_gate, void* grad_up,
                          int64_t count, DType dtype, Stream stream) {
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    backward_kernel<kDType><<<blocks_for(count), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const Element<kDType>*>(grad_y), static_cast<const Element<kDType>*>(gate),
        static_cast<const Element<kDType>*>(up), static_cast<Element<kDType>*>(grad_gate),
        static_cast<Element<kDType>*>(grad_up), count);
  });
  SHARDLORA_CUDA_CHECK_LAUNCH();
}

}  // namespace shardlora::kernels
