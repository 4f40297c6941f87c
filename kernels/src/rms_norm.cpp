// rms_norm dispatch: validates once, then routes by device.
#include "shardlora/kernels/rms_norm.h"

#include "common/fused_op_checks.h"
#include "rms_norm_impl.h"

namespace shardlora::kernels {

void rms_norm_forward(const void* x, const void* weight, void* y, float* inv_rms, RmsNormShape shape, float eps,
                      DType dtype, Device device, Stream stream) {
  check_rows("rms_norm_forward", shape.rows, shape.cols, dtype);
  SHARDLORA_CHECK(eps >= 0, "rms_norm_forward: eps ", eps, " is negative");
  if (shape.rows == 0) return;
  check_buffers("rms_norm_forward", {x, weight, y, inv_rms});
  if (device.type == DeviceType::CPU) return rms_norm_forward_cpu(x, weight, y, inv_rms, shape, eps, dtype);
  rms_norm_forward_cuda(x, weight, y, inv_rms, shape, eps, dtype, stream);
}

void rms_norm_backward(const void* grad_y, const void* x, const void* weight, const float* inv_rms, void* grad_x,
                       float* grad_weight, RmsNormShape shape, DType dtype, Device device, Stream stream) {
  check_rows("rms_norm_backward", shape.rows, shape.cols, dtype);
  if (shape.rows == 0) return;
  check_buffers("rms_norm_backward", {grad_y, x, weight, inv_rms, grad_x});
  if (device.type == DeviceType::CPU) {
    return rms_norm_backward_cpu(grad_y, x, weight, inv_rms, grad_x, grad_weight, shape, dtype);
  }
  rms_norm_backward_cuda(grad_y, x, weight, inv_rms, grad_x, grad_weight, shape, dtype, stream);
}

}  // namespace shardlora::kernels
