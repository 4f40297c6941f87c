// cross_entropy_rows dispatch: validates once, then routes by device.
#include "shardlora/kernels/cross_entropy.h"

#include "common/fused_op_checks.h"
#include "cross_entropy_impl.h"

namespace shardlora::kernels {

void cross_entropy_rows(void* logits, const int64_t* targets, float* losses, CrossEntropyShape shape, int64_t ignore_index,
                        bool write_gradient, DType dtype, Device device, Stream stream) {
  check_rows("cross_entropy_rows", shape.rows, shape.vocab, dtype);
  if (shape.rows == 0) return;
  check_buffers("cross_entropy_rows", {logits, targets, losses});
  if (device.type == DeviceType::CPU) {
    return cross_entropy_rows_cpu(logits, targets, losses, shape, ignore_index, write_gradient, dtype);
  }
  cross_entropy_rows_cuda(logits, targets, losses, shape, ignore_index, write_gradient, dtype, stream);
}

}  // namespace shardlora::kernels
