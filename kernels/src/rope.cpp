// rope_apply dispatch: validates once, then routes by device.
#include "shardlora/kernels/rope.h"

#include "common/fused_op_checks.h"
#include "rope_impl.h"

namespace shardlora::kernels {

void rope_apply(void* x, const void* cos, const void* sin, RopeShape shape, RopeDirection direction, DType dtype,
                Device device, Stream stream) {
  check_rows("rope_apply", shape.tokens, shape.head_dim, dtype);
  SHARDLORA_CHECK(shape.heads > 0 && shape.head_dim % 2 == 0, "rope_apply: needs heads > 0 and an even head_dim, got ",
                  shape.heads, " heads of ", shape.head_dim);
  if (shape.tokens == 0) return;
  check_buffers("rope_apply", {x, cos, sin});
  if (device.type == DeviceType::CPU) return rope_apply_cpu(x, cos, sin, shape, direction, dtype);
  rope_apply_cuda(x, cos, sin, shape, direction, dtype, stream);
}

}  // namespace shardlora::kernels
