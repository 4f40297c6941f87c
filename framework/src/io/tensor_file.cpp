#include "shardlora/io/tensor_file.h"

#include "shardlora/io/safetensors.h"
#include "shardlora/kernels/check.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::io {

void write_tensor_file(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, size_t>> bound;
  for (const auto& [name, tensor] : tensors) bound.emplace_back(name, tensor.dim());
  SafetensorsWriter writer(path, SafetensorsWriter::header_bound(bound, metadata));
  for (const auto& [name, tensor] : tensors) {
    const torch::Tensor host = tensor.to(torch::kCPU).contiguous();
    writer.add(name, safetensors_dtype_name(host.scalar_type()), host.sizes().vec(), host.data_ptr(), host.nbytes());
  }
  writer.finish(metadata);
}

std::map<std::string, torch::Tensor> read_tensor_file(const std::string& path) {
  const SafetensorsFile file(path);
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& info : file.header().tensors) {
    const auto type = scalar_type_from_safetensors(info.dtype);
    SHARDLORA_CHECK(type, path, ": tensor '", info.name, "' has unsupported dtype ", info.dtype);
    tensors[info.name] =
        torch::from_blob(const_cast<uint8_t*>(file.data(info)), info.shape, torch::TensorOptions().dtype(*type)).clone();
  }
  return tensors;
}

}  // namespace shardlora::io
