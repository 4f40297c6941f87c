#include "shardlora/nn/merge.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "shardlora/io/checkpoint_rewriter.h"
#include "shardlora/io/staging_directory.h"
#include "shardlora/kernels/check.h"
#include "shardlora/nn/hf_loader.h"
#include "shardlora/nn/llama_config.h"
#include "shardlora/nn/peft_adapter.h"
#include "shardlora/quant/checkpoint_quantizer.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::nn {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// bitsandbytes' companions of a packed weight: consumed with it, not written.
bool is_quant_companion(const std::string& name) {
  for (const char* suffix : {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"}) {
    if (ends_with(name, suffix)) return true;
  }
  return name.find(".quant_state.bitsandbytes__") != std::string::npos;
}

}  // namespace

MergeReport merge_adapter(const std::string& base_dir, const std::string& adapter_dir, const std::string& out_dir,
                          const MergeOptions& options) {
  SHARDLORA_CHECK(is_float_type(options.dtype), "merge: the output dtype must be float32, float16 or bfloat16");
  const io::HfCheckpoint checkpoint = io::open_hf_checkpoint(base_dir);
  check_hf_model(base_dir);  // nothing is written for a base no loader would take
  const PeftAdapter adapter = read_peft_adapter(adapter_dir);
  io::check_output_apart(out_dir, adapter_dir, "the adapter");

  // New tokens: embed_tokens and lm_head grown as the model grows them (rows of the mean),
  // then the trained rows in place; a matrix of modules_to_save is the adapter's, whole.
  std::set<std::string> used;
  ModelOptions shape;
  set_adapter_options(adapter, shape);
  const int64_t vocab_size = shape.vocab_size;
  const auto with_token_rows = [&](const std::string& name, const torch::Tensor& view) {
    const std::string module_path = module_name_of(name.substr(0, name.size() - std::string(".weight").size()));
    if (const auto whole = adapter.tensors.find("base_model.model." + module_path + ".weight"); whole != adapter.tensors.end()) {
      SHARDLORA_CHECK(whole->second.dim() == 2 && whole->second.size(1) == view.size(1), adapter_dir, ": tensor '", whole->first,
                      "' has shape ", whole->second.sizes(), " for ", name);
      used.insert(whole->first);
      return whole->second;
    }
    torch::Tensor weight = grow_vocabulary(view.to(torch::kFloat32), vocab_size);
    const std::string key = peft_token_rows_key(module_path);
    if (const auto it = adapter.tensors.find(key); it != adapter.tensors.end()) {
      SHARDLORA_CHECK(it->second.sizes() == c10::IntArrayRef({static_cast<int64_t>(adapter.trainable_tokens.size()), weight.size(1)}),
                      adapter_dir, ": tensor '", key, "' has shape ", it->second.sizes(), " for ", name);
      weight.index_copy_(0, torch::tensor(adapter.trainable_tokens, torch::kInt64), it->second);
      used.insert(key);
    }
    return weight;
  };

  MergeReport report;
  io::CheckpointRewrite rewrite;
  rewrite.force = options.force;
  rewrite.plan = [](const io::TensorInfo& tensor) -> std::vector<std::pair<std::string, size_t>> {
    if (is_quant_companion(tensor.name)) return {};
    return {{tensor.name, std::max<size_t>(tensor.shape.size(), 2)}};  // a bnb weight [n, 1] becomes [out, in]
  };
  rewrite.rewrite = [&](const io::TensorInfo& tensor, const torch::Tensor& view, const io::CheckpointLookup& lookup,
                        const std::string& where) -> std::vector<std::pair<std::string, torch::Tensor>> {
    if (is_quant_companion(tensor.name)) return {};
    const bool vocabulary_matrix = ends_with(tensor.name, "embed_tokens.weight") || tensor.name == "lm_head.weight";
    if (vocabulary_matrix && (!adapter.trainable_tokens.empty() || !adapter.modules_to_save.empty())) {
      return {{tensor.name, with_token_rows(tensor.name, view).to(options.dtype)}};
    }
    const bool packed = quant::is_bnb_4bit_weight(tensor.name, lookup);
    if (!packed && !quant::is_decoder_linear_weight(tensor.name, tensor.shape.size())) {
      return {{tensor.name, is_float_type(view.scalar_type()) ? view.to(options.dtype) : view}};
    }
    std::shared_ptr<FrozenLinear> base;
    if (packed) {
      base = std::make_shared<Linear4bit>(quant::from_bnb_tensors(tensor.name, lookup, where));
    } else {
      base = std::make_shared<DenseLinear>(view.to(torch::kFloat32));
    }
    const std::string module_path = module_name_of(tensor.name.substr(0, tensor.name.size() - std::string(".weight").size()));
    const std::string short_name = module_path.substr(module_path.rfind('.') + 1);
    if (!is_lora_target(adapter.target_modules, short_name)) return {{tensor.name, base->dense_weight(options.dtype)}};
    AdaptedLinear linear(base, adapter.lora);
    copy_adapter_tensors(linear, module_path, adapter, adapter_dir + " (for " + where + ")", used);
    ++report.merged_modules;
    return {{tensor.name, linear->merged_weight(options.dtype)}};
  };
  // Called after every tensor, before the output is committed: a stray adapter key fails it.
  rewrite.config = [&](nlohmann::json config) {
    for (const auto& [key, tensor] : adapter.tensors) {
      SHARDLORA_CHECK(used.count(key), adapter_dir, ": tensor '", key, "' matches no weight of ", base_dir);
    }
    config.erase("quantization_config");
    if (vocab_size > 0) {
      nlohmann::json& text = config.contains("text_config") ? config["text_config"] : config;
      text["vocab_size"] = std::max(vocab_size, text.value("vocab_size", int64_t{0}));
    }
    config["torch_dtype"] = torch_dtype_name(options.dtype);
    return config;
  };
  // An adapter trained with new tokens carries the tokenizer that knows them.
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
    if (std::filesystem::exists(adapter_dir + "/" + name)) {
      rewrite.replaced_files.push_back(adapter_dir + "/" + name);
    }
  }
  report.bytes_out = io::rewrite_checkpoint(checkpoint, out_dir, rewrite).bytes_out;
  return report;
}

}  // namespace shardlora::nn
