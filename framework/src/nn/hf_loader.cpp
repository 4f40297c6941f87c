#include "shardlora/nn/hf_loader.h"

#include <cstring>
#include <map>
#include <memory>
#include <set>

#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/io/safetensors.h"
#include "shardlora/kernels/check.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::nn {
namespace {

// Tensors of every shard by name, each copied out of its file's memory map when asked for
// (and its pages dropped from this process): no tensor that outlives loading points into a
// mapping, so replacing or truncating the model's files under a running job cannot kill it
// with SIGBUS. Float tensors are checked for NaN and infinities here, naming the tensor.
class ShardedWeights {
 public:
  // `shapes_only`: tensors larger than a quant state's bookkeeping come back as meta tensors
  // of their shape and dtype (a model built from them checks names and shapes, reads no data).
  ShardedWeights(const io::HfCheckpoint& checkpoint, const LlamaConfig& config, bool shapes_only)
      : config_(config), shapes_only_(shapes_only) {
    for (const auto& shard : checkpoint.shards) {
      auto file = std::make_shared<io::SafetensorsFile>(checkpoint.path(shard));
      for (const auto& tensor : file->header().tensors) {
        SHARDLORA_CHECK(!index_.count(tensor.name), file->path(), ": tensor '", tensor.name, "' also appears in ",
                        index_[tensor.name].first->path());
        index_[tensor.name] = {file, &tensor};
      }
    }
  }

  // A multimodal checkpoint may hold the module's tensor under its published name.
  std::optional<torch::Tensor> find(const std::string& module_name) {
    std::string name = module_name;
    if (config_.multimodal && !index_.count(name)) name = published_multimodal_name(name).value_or(name);
    const auto it = index_.find(name);
    if (it == index_.end()) return std::nullopt;
    used_.insert(name);
    const auto& [file, info] = it->second;
    const auto type = scalar_type_from_safetensors(info->dtype);
    SHARDLORA_CHECK(type, file->path(), ": tensor '", name, "': dtype ", info->dtype, " is not supported");
    if (shapes_only_ && info->bytes() > kReadWhenCheckingBytes) {
      return torch::empty(info->shape, torch::TensorOptions().dtype(*type).device(torch::kMeta));
    }
    torch::Tensor tensor = torch::empty(info->shape, torch::TensorOptions().dtype(*type));
    std::memcpy(tensor.data_ptr(), file->data(*info), info->bytes());
    file->release(*info);
    SHARDLORA_CHECK(!is_float_type(*type) || torch::isfinite(tensor).all().item<bool>(), file->path(), ": tensor '", name,
                    "' holds NaN or infinite values");
    return tensor;
  }

  // Names present in the checkpoint and never asked for, besides buffers HF also ignores
  // (and a multimodal model's vision tower: only its language model is trained).
  std::vector<std::string> unused() const {
    std::vector<std::string> names;
    for (const auto& [name, entry] : index_) {
      const bool ignorable = name.find("rotary_emb.inv_freq") != std::string::npos ||
                             (config_.tie_word_embeddings && module_name_of(name) == "lm_head.weight") ||
                             (config_.multimodal && is_vision_tensor(name));
      if (!used_.count(name) && !ignorable) names.push_back(name);
    }
    return names;
  }

 private:
  std::map<std::string, std::pair<std::shared_ptr<io::SafetensorsFile>, const io::TensorInfo*>> index_;
  const LlamaConfig& config_;
  static constexpr uint64_t kReadWhenCheckingBytes = 4096;  // bnb quant-state JSON, code tables
  bool shapes_only_;
  std::set<std::string> used_;
};

LlamaModel build_model(const std::string& dir, const ModelOptions& options, bool shapes_only) {
  const io::HfCheckpoint checkpoint = io::open_hf_checkpoint(dir);
  const LlamaConfig config = parse_llama_config(checkpoint.config, checkpoint.path(io::kConfigFile));
  ShardedWeights weights(checkpoint, config, shapes_only);
  LlamaModel model(config, [&weights](const std::string& name) { return weights.find(name); }, options, dir);
  const auto extra = weights.unused();
  SHARDLORA_CHECK(extra.empty(), dir, ": ", extra.size(), " tensor(s) the ", config.model_type, " model does not use, e.g. '",
                  extra.empty() ? "" : extra.front(), "'");
  return model;
}

}  // namespace

LlamaModel load_hf_model(const std::string& dir, const ModelOptions& options) { return build_model(dir, options, /*shapes_only=*/false); }

void check_hf_model(const std::string& dir) {
  ModelOptions options;
  options.device = torch::kMeta;
  options.compute_dtype = torch::kFloat32;
  options.quantize_base = false;
  options.lora.r = 0;
  build_model(dir, options, /*shapes_only=*/true);
}

}  // namespace shardlora::nn
