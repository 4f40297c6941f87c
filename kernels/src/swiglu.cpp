// swiglu dispatch: validates once, then routes by device.
#include "shardlora/kernels/swiglu.h"

#include "common/fused_op_checks.h"
#include "swiglu_impl.h"

namespace shardlora::kernels {

void swiglu_forward(const void* gate, const void* up, void* y, int64_t count, DType dtype, Device device, Stream stream) {
  check_rows("swiglu_forward", count, 1, dtype);
  if (count == 0) return;
  check_buffers("swiglu_forward", {gate, up, y});
  if (device.type == DeviceType::CPU) return swiglu_forward_cpu(gate, up, y, count, dtype);
  swiglu_forward_cuda(gate, up, y, count, dtype, stream);
}

void swiglu_backward(const void* grad_y, const void* gate, const void* up, void* grad_gate, void* grad_up, int64_t count,
                     DType dtype, Device device, Stream stream) {
  check_rows("swiglu_backward", count, 1, dtype);
  if (count == 0) return;
  check_buffers("swiglu_backward", {grad_y, gate, up, grad_gate, grad_up});
  if (device.type == DeviceType::CPU) return swiglu_backward_cpu(grad_y, gate, up, grad_gate, grad_up, count, dtype);
  swiglu_backward_cuda(grad_y, gate, up, grad_gate, grad_up, count, dtype, stream);
}

}  // namespace shardlora::kernels
