// What the CUDA kernel tests share: device buffers, and a fixture that skips, saying why,
// when the build has no CUDA or no device is visible.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <vector>

#include "shardlora/kernels/device.h"

namespace shardlora::testing {

// Device memory holding a copy of a host vector (or scratch of a given size).
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes), pointer_(bytes ? kernels::cuda_malloc(bytes) : nullptr) {}
  template <typename T>
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size() * sizeof(T)) {
    if (bytes_) kernels::cuda_copy_to_device(pointer_, host.data(), bytes_);
  }
  ~DeviceBuffer() {
    if (pointer_) kernels::cuda_free(pointer_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(pointer_); }
  template <typename T>
  std::vector<T> to_host(size_t count) const {
    kernels::cuda_synchronize();
    std::vector<T> host(count);
    if (count) kernels::cuda_copy_to_host(host.data(), pointer_, count * sizeof(T));
    return host;
  }

 private:
  size_t bytes_;
  void* pointer_;
};

class KernelsCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    const kernels::CudaRuntimeInfo info = kernels::cuda_runtime_info();
    if (info.device_count == 0) GTEST_SKIP() << "no CUDA device: " << info.status;
  }
};

}  // namespace shardlora::testing
