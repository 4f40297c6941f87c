// libFuzzer target: the safetensors header parser on arbitrary bytes must either return a
// header or throw shardlora::Error, never crash, hang or read outside the buffer (ASan).
#include <cstddef>
#include <cstdint>

#include "shardlora/io/safetensors.h"
#include "shardlora/kernels/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto header = shardlora::io::parse_safetensors_header(data, size, "fuzz");
    // A header that parses must describe tensors inside the buffer.
    for (const auto& tensor : header.tensors) {
      if (8 + header.header_bytes + tensor.end > size) __builtin_trap();
    }
  } catch (const shardlora::Error&) {
  }
  return 0;
}
