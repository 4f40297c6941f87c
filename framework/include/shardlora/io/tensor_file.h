// Whole-file safetensors I/O for tensors held in memory (adapters, optimizer state, test
// fixtures). Streaming conversions use SafetensorsWriter directly.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>

namespace shardlora::io {

// Writes the tensors (any device; copied to contiguous CPU memory one at a time) in name
// order, atomically: a temporary file, fsynced, renamed over `path`.
void write_tensor_file(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Every tensor of the file, copied into CPU tensors of the stored dtype. Unsupported dtypes
// are errors naming the file and tensor.
std::map<std::string, torch::Tensor> read_tensor_file(const std::string& path);

}  // namespace shardlora::io
