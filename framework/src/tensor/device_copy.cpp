#include "shardlora/tensor/device_copy.h"

namespace shardlora {

at::Tensor to_device(const at::Tensor& tensor, const c10::Device& device) {
  if (!device.is_cuda() || !tensor.is_cpu()) return tensor.to(device);
  return tensor.pin_memory().to(device, /*non_blocking=*/true);
}

}  // namespace shardlora
