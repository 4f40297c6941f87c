// dequantize_4bit on CUDA equals the scalar reference bit for bit (fp32 products, then
// CUDA's round-to-nearest-even intrinsics against the host conversion).
// Skipped, with the reason, when the build has no CUDA or no device is visible.
#include <gtest/gtest.h>

#include <cstring>

#include "numerics/dequantize_4bit_cases.h"

using namespace shardlora::kernels;
using namespace shardlora::testing;

namespace {

// Device memory holding a copy of a host vector (or scratch of a given size).
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes), pointer_(bytes ? cuda_malloc(bytes) : nullptr) {}
  template <typename T>
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size() * sizeof(T)) {
    if (bytes_) cuda_copy_to_device(pointer_, host.data(), bytes_);
  }
  ~DeviceBuffer() {
    if (pointer_) cuda_free(pointer_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(pointer_); }

 private:
  size_t bytes_;
  void* pointer_;
};

class Dequantize4bitCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    const CudaRuntimeInfo info = cuda_runtime_info();
    if (info.device_count == 0) GTEST_SKIP() << "no CUDA device: " << info.status;
  }
};

}  // namespace

TEST_F(Dequantize4bitCuda, EqualsReferenceBitForBit) {
  std::vector<int64_t> sizes = kAwkwardSizes;
  sizes.push_back(int64_t{1} << 24 | 5);  // > one grid's worth of threads at 8 elements each
  for (const QuantType type : kQuant4bitTypes) {
    for (const int64_t blocksize : {32, 64, 256, 4096}) {
      for (const int64_t numel : sizes) {
        const auto tensor = make_random_4bit(numel, blocksize, static_cast<uint32_t>(numel + blocksize));
        const DeviceBuffer codes(tensor.codes), absmax(tensor.absmax);
        const Packed4bit on_device{type, codes.as<uint8_t>(), absmax.as<float>(), numel, blocksize};
        for (const DType dtype : kFloatDTypes) {
          auto expected = output_buffer(numel, dtype);
          auto actual = output_buffer(numel, dtype);
          dequantize_4bit_ref(tensor.view(type, numel, blocksize), expected.data(), dtype);
          const DeviceBuffer out(actual.size());
          cuda_copy_to_device(out.as<void>(), actual.data(), actual.size());  // guard bytes included
          dequantize_4bit(on_device, out.as<void>(), dtype, Device::cuda());
          cuda_synchronize();
          cuda_copy_to_host(actual.data(), out.as<void>(), actual.size());
          ASSERT_EQ(0, std::memcmp(expected.data(), actual.data(), actual.size()))
              << quant_type_traits(type).name << " blocksize " << blocksize << " numel " << numel
              << " " << dtype_name(dtype);
        }
      }
    }
  }
}
