#include "shardlora/io/checkpoint_rewriter.h"

#include <filesystem>
#include <map>
#include <memory>

#include "shardlora/io/staging_directory.h"
#include "shardlora/kernels/check.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::io {
namespace {

namespace fs = std::filesystem;

torch::Tensor tensor_view(const SafetensorsFile& file, const TensorInfo& info) {
  const auto type = scalar_type_from_safetensors(info.dtype);
  SHARDLORA_CHECK(type, file.path(), ": tensor '", info.name, "': dtype ", info.dtype, " is not supported");
  return torch::from_blob(const_cast<uint8_t*>(file.data(info)), info.shape, torch::TensorOptions().dtype(*type));
}

}  // namespace

CheckpointRewriteReport rewrite_checkpoint(const HfCheckpoint& checkpoint, const std::string& out_dir,
                                           const CheckpointRewrite& rewrite) {
  check_output_apart(out_dir, checkpoint.dir, "its input checkpoint");
  CheckpointRewriteReport report;
  std::vector<std::unique_ptr<SafetensorsFile>> inputs;
  std::map<std::string, std::pair<const SafetensorsFile*, const TensorInfo*>> by_name;
  uint64_t total = 0, done = 0;
  for (const auto& shard : checkpoint.shards) {
    inputs.push_back(std::make_unique<SafetensorsFile>(checkpoint.path(shard)));
    report.bytes_in += fs::file_size(checkpoint.path(shard));
    total += inputs.back()->header().data_bytes;
    for (const auto& tensor : inputs.back()->header().tensors) by_name[tensor.name] = {inputs.back().get(), &tensor};
  }
  const CheckpointLookup lookup = [&by_name](const std::string& name) -> std::optional<torch::Tensor> {
    const auto it = by_name.find(name);
    if (it == by_name.end()) return std::nullopt;
    return tensor_view(*it->second.first, *it->second.second);
  };

  StagingDirectory staging(out_dir, rewrite.force);
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total_tensor_bytes = 0;
  for (size_t shard_index = 0; shard_index < checkpoint.shards.size(); ++shard_index) {
    const std::string& shard = checkpoint.shards[shard_index];
    const SafetensorsFile& in = *inputs[shard_index];
    std::vector<std::pair<std::string, size_t>> outputs;
    for (const auto& tensor : in.header().tensors) {
      const auto planned = rewrite.plan(tensor);
      outputs.insert(outputs.end(), planned.begin(), planned.end());
    }
    SafetensorsWriter out(staging.path(shard), SafetensorsWriter::header_bound(outputs));
    for (const auto& tensor : in.header().tensors) {
      const std::string where = in.path() + ": tensor '" + tensor.name + "'";
      if (checkpoint.indexed) {
        const auto listed = checkpoint.weight_map.find(tensor.name);
        SHARDLORA_CHECK(listed != checkpoint.weight_map.end() && listed->second == shard, where, ": not listed for this shard in ",
                        kShardIndex);
      }
      const torch::Tensor view = tensor_view(in, tensor);
      SHARDLORA_CHECK(!is_float_type(view.scalar_type()) || torch::isfinite(view).all().item<bool>(), where,
                      ": holds NaN or infinite values");
      for (const auto& [name, part] : rewrite.rewrite(tensor, view, lookup, where)) {
        const torch::Tensor host = part.cpu().contiguous();
        out.add(name, safetensors_dtype_name(host.scalar_type()), host.sizes().vec(), host.data_ptr(), host.nbytes());
        weight_map[name] = shard;
      }
      in.release(tensor);
      done += tensor.bytes();
      if (rewrite.on_progress) rewrite.on_progress(done, total, tensor.name);
    }
    total_tensor_bytes += out.data_bytes();
    out.finish();
    report.bytes_out += fs::file_size(staging.path(shard));
  }
  if (checkpoint.indexed) {
    const nlohmann::json index = {{"metadata", {{"total_size", total_tensor_bytes}}}, {"weight_map", weight_map}};
    write_file_atomically(staging.path(kShardIndex), index.dump(2) + "\n");
  }
  write_file_atomically(staging.path(kConfigFile), rewrite.config(checkpoint.config).dump(2) + "\n");
  for (const std::string& file : rewrite.replaced_files) {
    copy_file_durably(file, staging.path(fs::path(file).filename().string()));
  }
  for (const auto& entry : fs::directory_iterator(checkpoint.dir)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name == kConfigFile || name == kShardIndex || entry.path().extension() == ".safetensors") {
      continue;
    }
    if (!fs::exists(staging.path(name))) copy_file_durably(entry.path().string(), staging.path(name));
  }
  staging.commit();
  return report;
}

}  // namespace shardlora::io
