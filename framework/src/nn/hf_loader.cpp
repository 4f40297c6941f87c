#include "shardlora/nn/hf_loader.h"

#include <map>
#include <memory>
#include <set>

#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/io/safetensors.h"
#include "shardlora/kernels/check.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::nn {
namespace {

// Tensors of every shard by name, as views into the memory maps. A view keeps its file
// mapped (the deleter holds it), so tensors that survive loading stay valid; when a view
// dies (a weight was quantized or converted) its pages are dropped from this process.
class ShardedWeights {
 public:
  explicit ShardedWeights(const io::HfCheckpoint& checkpoint) {
    for (const auto& shard : checkpoint.shards) {
      auto file = std::make_shared<io::SafetensorsFile>(checkpoint.path(shard));
      for (const auto& tensor : file->header().tensors) {
        SHARDLORA_CHECK(!index_.count(tensor.name), file->path(), ": tensor '", tensor.name, "' also appears in ",
                        index_[tensor.name].first->path());
        index_[tensor.name] = {file, &tensor};
      }
    }
  }

  std::optional<torch::Tensor> find(const std::string& name) {
    const auto it = index_.find(name);
    if (it == index_.end()) return std::nullopt;
    used_.insert(name);
    const auto& [file, info] = it->second;
    const auto type = scalar_type_from_safetensors(info->dtype);
    SHARDLORA_CHECK(type, file->path(), ": tensor '", name, "': dtype ", info->dtype, " is not supported");
    return torch::from_blob(const_cast<uint8_t*>(file->data(*info)), info->shape,
                            [file, info = info](void*) { file->release(*info); }, torch::TensorOptions().dtype(*type));
  }

  // Names present in the checkpoint and never asked for, besides buffers HF also ignores.
  std::vector<std::string> unused(const LlamaConfig& config) const {
    std::vector<std::string> names;
    for (const auto& [name, entry] : index_) {
      const bool ignorable = name.find("rotary_emb.inv_freq") != std::string::npos ||
                             (config.tie_word_embeddings && name == "lm_head.weight");
      if (!used_.count(name) && !ignorable) names.push_back(name);
    }
    return names;
  }

 private:
  std::map<std::string, std::pair<std::shared_ptr<io::SafetensorsFile>, const io::TensorInfo*>> index_;
  std::set<std::string> used_;
};

}  // namespace

LlamaModel load_hf_model(const std::string& dir, const ModelOptions& options) {
  const io::HfCheckpoint checkpoint = io::open_hf_checkpoint(dir);
  const LlamaConfig config = parse_llama_config(checkpoint.config, checkpoint.path(io::kConfigFile));
  ShardedWeights weights(checkpoint);
  LlamaModel model(config, [&weights](const std::string& name) { return weights.find(name); }, options, dir);
  const auto extra = weights.unused(config);
  SHARDLORA_CHECK(extra.empty(), dir, ": ", extra.size(), " tensor(s) the ", config.model_type, " model does not use, e.g. '",
                  extra.empty() ? "" : extra.front(), "'");
  return model;
}

}  // namespace shardlora::nn
