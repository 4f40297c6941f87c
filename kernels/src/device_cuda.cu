// CUDA runtime services behind device.h.
#include <cuda_runtime.h>

#include <cstdio>

#include "common/cuda_check.h"
#include "shardlora/kernels/device.h"

namespace shardlora::kernels {

CudaRuntimeInfo cuda_runtime_info() {
  CudaRuntimeInfo info;
  info.compiled = true;
  info.architectures = SHARDLORA_CUDA_ARCHITECTURES;
  cudaRuntimeGetVersion(&info.runtime_version);
  cudaDriverGetVersion(&info.driver_version);
  const cudaError_t status = cudaGetDeviceCount(&info.device_count);
  if (status != cudaSuccess) {
    info.device_count = 0;
    info.status = cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky error so later calls start clean
  } else if (info.device_count == 0) {
    info.status = "no CUDA device visible";
  }
  return info;
}

std::string cuda_device_description(int index) {
  cudaDeviceProp prop{};
  SHARDLORA_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  char text[320];
  std::snprintf(text, sizeof text, "%s (sm_%d%d, %.1f GiB, %d SMs)", prop.name, prop.major,
                prop.minor, static_cast<double>(prop.totalGlobalMem) / (1 << 30),
                prop.multiProcessorCount);
  return text;
}

int cuda_compute_capability(int index) {
  int major = 0, minor = 0;
  SHARDLORA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index));
  SHARDLORA_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, index));
  return 10 * major + minor;
}

void* cuda_malloc(size_t bytes) {
  void* pointer = nullptr;
  SHARDLORA_CUDA_CHECK(cudaMalloc(&pointer, bytes));
  return pointer;
}

void cuda_free(void* pointer) { SHARDLORA_CUDA_CHECK(cudaFree(pointer)); }

void cuda_copy_to_device(void* device_dst, const void* host_src, size_t bytes) {
  SHARDLORA_CUDA_CHECK(cudaMemcpy(device_dst, host_src, bytes, cudaMemcpyHostToDevice));
}

void cuda_copy_to_host(void* host_dst, const void* device_src, size_t bytes) {
  SHARDLORA_CUDA_CHECK(cudaMemcpy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost));
}

void cuda_copy_on_device(void* device_dst, const void* device_src, size_t bytes) {
  SHARDLORA_CUDA_CHECK(cudaMemcpyAsync(device_dst, device_src, bytes, cudaMemcpyDeviceToDevice));
}

void cuda_synchronize() { SHARDLORA_CUDA_CHECK(cudaDeviceSynchronize()); }

void cuda_set_device(int index) { SHARDLORA_CUDA_CHECK(cudaSetDevice(index)); }

Stream cuda_stream_create() {
  cudaStream_t stream = nullptr;
  SHARDLORA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return stream;
}

void cuda_stream_destroy(Stream stream) { SHARDLORA_CUDA_CHECK(cudaStreamDestroy(static_cast<cudaStream_t>(stream))); }

void cuda_stream_synchronize(Stream stream) {
  SHARDLORA_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
}

Event cuda_event_create() {
  cudaEvent_t event = nullptr;
  SHARDLORA_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  return event;
}

void cuda_event_destroy(Event event) { SHARDLORA_CUDA_CHECK(cudaEventDestroy(static_cast<cudaEvent_t>(event))); }

void cuda_event_record(Event event, Stream stream) {
  SHARDLORA_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)));
}

void cuda_stream_wait_event(Stream stream, Event event) {
  SHARDLORA_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event), 0));
}

bool cuda_event_query(Event event) {
  const cudaError_t status = cudaEventQuery(static_cast<cudaEvent_t>(event));
  if (status == cudaErrorNotReady) return false;
  SHARDLORA_CUDA_CHECK(status);
  return true;
}

void cuda_event_synchronize(Event event) { SHARDLORA_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event))); }

void cuda_copy_async(void* dst, const void* src, size_t bytes, Stream stream) {
  SHARDLORA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream)));
}

}  // namespace shardlora::kernels
