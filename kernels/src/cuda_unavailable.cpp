// Built instead of the .cu files when CUDA is off: device queries report no CUDA, and
// every CUDA entry point fails with one precise message.
#include "dequantize_4bit_impl.h"
#include "shardlora/kernels/check.h"
#include "shardlora/kernels/device.h"

namespace shardlora::kernels {
namespace {

[[noreturn]] void no_cuda(const char* what) {
  throw Error(detail::concat(what, ": this shardlora build has no CUDA support (rebuild with ",
                             "nvcc available and -DSHARDLORA_CUDA=ON)"));
}

}  // namespace

CudaRuntimeInfo cuda_runtime_info() {
  CudaRuntimeInfo info;
  info.status = "built without CUDA";
  return info;
}

std::string cuda_device_description(int) { no_cuda("cuda_device_description"); }
void* cuda_malloc(size_t) { no_cuda("cuda_malloc"); }
void cuda_free(void*) { no_cuda("cuda_free"); }
void cuda_copy_to_device(void*, const void*, size_t) { no_cuda("cuda_copy_to_device"); }
void cuda_copy_to_host(void*, const void*, size_t) { no_cuda("cuda_copy_to_host"); }
void cuda_copy_on_device(void*, const void*, size_t) { no_cuda("cuda_copy_on_device"); }
void cuda_synchronize() { no_cuda("cuda_synchronize"); }

void dequantize_4bit_cuda(const Packed4bit&, void*, DType, Stream) { no_cuda("dequantize_4bit"); }

}  // namespace shardlora::kernels
