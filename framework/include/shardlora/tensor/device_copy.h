// Host tensors onto the device without a host sync.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace shardlora {

// `tensor` on `device`; from the host onto a GPU through pinned memory, without blocking: a
// blocking copy from pageable memory first waits for all the work queued on the stream (in
// training, the previous micro-batch's backward), a host sync per call.
at::Tensor to_device(const at::Tensor& tensor, const c10::Device& device);

}  // namespace shardlora
