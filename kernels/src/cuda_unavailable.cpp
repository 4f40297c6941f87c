// Built instead of the .cu files when CUDA is off: device queries report no CUDA, and
// every CUDA entry point fails with one precise message.
#include "adamw_impl.h"
#include "blockwise_8bit_impl.h"
#include "cross_entropy_impl.h"
#include "dequantize_4bit_impl.h"
#include "gemv_4bit_impl.h"
#include "quantize_4bit_impl.h"
#include "rms_norm_impl.h"
#include "rope_impl.h"
#include "swiglu_impl.h"
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
int cuda_compute_capability(int) { no_cuda("cuda_compute_capability"); }
void* cuda_malloc(size_t) { no_cuda("cuda_malloc"); }
void cuda_free(void*) { no_cuda("cuda_free"); }
void cuda_copy_to_device(void*, const void*, size_t) { no_cuda("cuda_copy_to_device"); }
void cuda_copy_to_host(void*, const void*, size_t) { no_cuda("cuda_copy_to_host"); }
void cuda_copy_on_device(void*, const void*, size_t) { no_cuda("cuda_copy_on_device"); }
void cuda_synchronize() { no_cuda("cuda_synchronize"); }
void cuda_set_device(int) { no_cuda("cuda_set_device"); }
Stream cuda_stream_create() { no_cuda("cuda_stream_create"); }
void cuda_stream_destroy(Stream) { no_cuda("cuda_stream_destroy"); }
void cuda_stream_synchronize(Stream) { no_cuda("cuda_stream_synchronize"); }
Event cuda_event_create() { no_cuda("cuda_event_create"); }
void cuda_event_destroy(Event) { no_cuda("cuda_event_destroy"); }
void cuda_event_record(Event, Stream) { no_cuda("cuda_event_record"); }
void cuda_stream_wait_event(Stream, Event) { no_cuda("cuda_stream_wait_event"); }
bool cuda_event_query(Event) { no_cuda("cuda_event_query"); }
void cuda_event_synchronize(Event) { no_cuda("cuda_event_synchronize"); }
void cuda_copy_async(void*, const void*, size_t, Stream) { no_cuda("cuda_copy_async"); }

void dequantize_4bit_cuda(const Packed4bit&, void*, DType, Stream) { no_cuda("dequantize_4bit"); }
void quantize_4bit_cuda(const void*, DType, const Quantized4bit&, Stream) { no_cuda("quantize_4bit"); }
void quantize_8bit_blockwise_cuda(const float*, float, const Blockwise8bit&, uint8_t*, float*, Stream) {
  no_cuda("quantize_8bit_blockwise");
}
void dequantize_8bit_blockwise_cuda(const uint8_t*, const float*, float, const Blockwise8bit&, float*, Stream) {
  no_cuda("dequantize_8bit_blockwise");
}
void chunk_sums_f64_cuda(const float*, int64_t, int64_t, double*, Stream) { no_cuda("chunk_sums_f64"); }
void adamw_step_32bit_cuda(float*, const float*, AdamW32bitState, int64_t, const AdamWScalars&, Stream) {
  no_cuda("adamw_step_32bit");
}
void adamw_step_8bit_cuda(float*, const float*, AdamW8bitState, int64_t, const AdamWScalars&, Stream) {
  no_cuda("adamw_step_8bit");
}
void gemv_4bit_cuda(const Packed4bit&, Gemv4bitShape, const void*, DType, void*, DType, Stream) {
  no_cuda("gemv_4bit");
}
void rms_norm_forward_cuda(const void*, const void*, void*, float*, RmsNormShape, float, DType, Stream) {
  no_cuda("rms_norm_forward");
}
void rms_norm_backward_cuda(const void*, const void*, const void*, const float*, void*, float*, RmsNormShape, DType, Stream) {
  no_cuda("rms_norm_backward");
}
void rope_apply_cuda(void*, const void*, const void*, RopeShape, RopeDirection, DType, Stream) { no_cuda("rope_apply"); }
void swiglu_forward_cuda(const void*, const void*, void*, int64_t, DType, Stream) { no_cuda("swiglu_forward"); }
void swiglu_backward_cuda(const void*, const void*, const void*, void*, void*, int64_t, DType, Stream) {
  no_cuda("swiglu_backward");
}
void cross_entropy_rows_cuda(void*, const int64_t*, float*, CrossEntropyShape, int64_t, bool, DType, Stream) {
  no_cuda("cross_entropy_rows");
}

}  // namespace shardlora::kernels
