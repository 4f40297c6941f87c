// Where a kernel runs, and the few CUDA runtime services the rest of the project needs
// without including CUDA headers. A build without CUDA reports zero devices and throws a
// precise error from anything that would touch one.
#pragma once

#include <cstddef>
#include <string>

namespace shardlora::kernels {

enum class DeviceType { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::CUDA, index}; }
};

// An opaque cudaStream_t; nullptr is the legacy default stream.
using Stream = void*;

struct CudaRuntimeInfo {
  bool compiled = false;        // this build has CUDA kernels
  int runtime_version = 0;      // e.g. 13000; 0 when not compiled
  int driver_version = 0;       // 0 when no driver is installed
  int device_count = 0;         // devices this process can see
  std::string status;           // why device_count is 0, when it is
  std::string architectures;    // the SASS targets compiled in, e.g. "80;90"
};

CudaRuntimeInfo cuda_runtime_info();

// Name and memory of one visible device, e.g. "NVIDIA H100 80GB HBM3 (79.1 GiB)".
std::string cuda_device_description(int index);

// Its compute capability as 10 * major + minor (90 for sm_90).
int cuda_compute_capability(int index);

// Raw device memory for tests and benchmarks; the framework allocates through libtorch.
void* cuda_malloc(size_t bytes);
void cuda_free(void* pointer);
void cuda_copy_to_device(void* device_dst, const void* host_src, size_t bytes);
void cuda_copy_to_host(void* host_dst, const void* device_src, size_t bytes);
void cuda_copy_on_device(void* device_dst, const void* device_src, size_t bytes);
void cuda_synchronize();

// Streams, events and asynchronous copies (any direction; host memory should be pinned for
// the copy to overlap), for double-buffered transfers such as the paged optimizer's.
using Event = void*;
void cuda_set_device(int index);
Stream cuda_stream_create();  // non-blocking with respect to the legacy default stream
void cuda_stream_destroy(Stream stream);
void cuda_stream_synchronize(Stream stream);
Event cuda_event_create();
void cuda_event_destroy(Event event);
void cuda_event_record(Event event, Stream stream);
void cuda_stream_wait_event(Stream stream, Event event);
// Whether the work before the event's last record has finished (never blocks: timeouts poll it).
bool cuda_event_query(Event event);
void cuda_event_synchronize(Event event);  // blocks the host until the event's work is done
void cuda_copy_async(void* dst, const void* src, size_t bytes, Stream stream);

}  // namespace shardlora::kernels
