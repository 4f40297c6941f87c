#include "shardlora/nn/peft_adapter.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "shardlora/io/durable_file.h"
#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/io/tensor_file.h"
#include "shardlora/kernels/check.h"
#include "shardlora/nn/llama_config.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::nn {
namespace {

namespace fs = std::filesystem;

std::string short_name(const std::string& module_path) { return module_path.substr(module_path.rfind('.') + 1); }

std::string shape_text(c10::IntArrayRef shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

std::string module_path_of(const LlamaConfig& config, const std::string& module) {
  return module == "lm_head" ? module : decoder_prefix(config) + module;
}

std::string token_rows_key(const LlamaConfig& config, bool lm_head) {
  return peft_token_rows_key(module_path_of(config, lm_head ? "lm_head" : "embed_tokens"));
}

// A module of modules_to_save as PEFT saves it: its weight under its own path.
std::string saved_module_key(const LlamaConfig& config, const std::string& module) {
  return "base_model.model." + module_path_of(config, module) + ".weight";
}

}  // namespace

std::string peft_token_rows_key(const std::string& module_path) {
  return "base_model.model." + module_path + ".token_adapter.trainable_tokens_delta";
}

std::string peft_key(const std::string& module_path, const std::string& suffix) {
  return "base_model.model." + module_path + "." + suffix;
}

void save_peft_adapter(const LlamaModel& model, const std::string& dir, const std::string& base_model_name_or_path) {
  io::create_directories(dir);
  std::set<std::string> targets;
  std::map<std::string, torch::Tensor> tensors;
  LoraOptions lora;
  for (const auto& [path, linear] : model->linears()) {
    if (!linear->has_adapter()) continue;
    lora = linear->lora();
    targets.insert(short_name(path));
    for (const auto& [suffix, tensor] : linear->adapter_tensors()) tensors[peft_key(path, suffix)] = tensor.detach();
  }
  SHARDLORA_CHECK(!tensors.empty(), "save_peft_adapter: the model has no LoRA adapters");
  std::vector<std::string> saved_modules;
  for (const auto& [module, weight] : model->saved_modules()) {
    tensors[saved_module_key(model->config(), module)] = weight.detach();
    saved_modules.push_back(module);
  }
  nlohmann::json token_indices = nullptr;
  for (const auto& [lm_head, rows] : {std::pair{false, model->embed_token_rows()}, std::pair{true, model->lm_head_token_rows()}}) {
    if (!rows.defined()) continue;
    tensors[token_rows_key(model->config(), lm_head)] = rows.detach();
    token_indices[lm_head ? "lm_head" : "embed_tokens"] = model->trainable_tokens();
  }
  io::write_tensor_file(dir + "/" + kAdapterWeightsFile, tensors);
  // PEFT's LoraConfig fields, with its defaults where shardlora has no counterpart.
  const nlohmann::json config = {
      {"alpha_pattern", nlohmann::json::object()}, {"auto_mapping", nullptr},
      {"base_model_name_or_path", base_model_name_or_path}, {"bias", "none"}, {"fan_in_fan_out", false},
      {"inference_mode", true}, {"init_lora_weights", true}, {"layer_replication", nullptr},
      {"layers_pattern", nullptr}, {"layers_to_transform", nullptr}, {"loftq_config", nlohmann::json::object()},
      {"lora_alpha", lora.alpha}, {"lora_dropout", lora.dropout}, {"megatron_config", nullptr},
      {"megatron_core", "megatron.core"},
      {"modules_to_save", saved_modules.empty() ? nlohmann::json(nullptr) : nlohmann::json(saved_modules)}, {"peft_type", "LORA"}, {"r", lora.r},
      {"rank_pattern", nlohmann::json::object()}, {"revision", nullptr},
      {"target_modules", std::vector<std::string>(targets.begin(), targets.end())}, {"task_type", "CAUSAL_LM"},
      {"trainable_token_indices", token_indices},
      {"use_dora", lora.use_dora}, {"use_rslora", lora.use_rslora},
  };
  io::write_file_atomically(dir + "/" + kAdapterConfigFile, config.dump(2) + "\n");
}

PeftAdapter read_peft_adapter(const std::string& dir) {
  const std::string config_path = dir + "/" + kAdapterConfigFile;
  SHARDLORA_CHECK(fs::exists(config_path), config_path, ": missing (not a PEFT adapter directory?)");
  const nlohmann::json config = io::read_json_file(config_path);
  const auto field = [&](const char* key) -> const nlohmann::json* {
    const auto it = config.find(key);
    return it == config.end() || it->is_null() ? nullptr : &*it;
  };
  const auto unsupported_unless = [&](const char* key, bool ok) {
    SHARDLORA_CHECK(ok, config_path, ": key '", key, "' = ", config.at(key).dump(), " is not supported by shardlora");
  };
  PeftAdapter adapter;
  const auto* type = field("peft_type");
  SHARDLORA_CHECK(type && type->is_string() && type->get<std::string>() == "LORA", config_path, ": peft_type must be \"LORA\"");
  const auto* r = field("r");
  SHARDLORA_CHECK(r && r->is_number_integer() && r->get<int64_t>() > 0, config_path, ": key 'r' must be a positive integer");
  adapter.lora.r = r->get<int64_t>();
  const auto* alpha = field("lora_alpha");
  SHARDLORA_CHECK(alpha && alpha->is_number(), config_path, ": key 'lora_alpha' must be a number");
  adapter.lora.alpha = alpha->get<double>();
  if (const auto* dropout = field("lora_dropout")) {
    SHARDLORA_CHECK(dropout->is_number() && dropout->get<double>() >= 0 && dropout->get<double>() < 1, config_path,
                    ": key 'lora_dropout' must be in [0, 1)");
    adapter.lora.dropout = dropout->get<double>();
  }
  if (const auto* rslora = field("use_rslora")) adapter.lora.use_rslora = rslora->is_boolean() && rslora->get<bool>();
  if (const auto* dora = field("use_dora")) adapter.lora.use_dora = dora->is_boolean() && dora->get<bool>();
  if (const auto* bias = field("bias")) unsupported_unless("bias", bias->is_string() && bias->get<std::string>() == "none");
  // Variants of LoRA, and options that change which modules are adapted: none implemented.
  for (const char* key : {"fan_in_fan_out", "lora_bias", "use_qalora"}) {
    if (const auto* flag = field(key)) unsupported_unless(key, flag->is_boolean() && !flag->get<bool>());
  }
  for (const char* key : {"rank_pattern", "alpha_pattern", "layers_to_transform", "exclude_modules",
                          "layer_replication", "target_parameters"}) {
    if (const auto* value = field(key)) unsupported_unless(key, (value->is_object() || value->is_array()) && value->empty());
  }
  if (const auto* modules = field("modules_to_save")) {
    SHARDLORA_CHECK(modules->is_array(), config_path, ": key 'modules_to_save' must be a list of module names");
    for (const auto& module : *modules) {
      unsupported_unless("modules_to_save", module.is_string() && (module == "embed_tokens" || module == "lm_head"));
      adapter.modules_to_save.push_back(module.get<std::string>());
    }
  }
  if (const auto* indices = field("trainable_token_indices")) {
    // A list (embed_tokens, and a tied lm_head with it) or one list per module.
    const auto ids_of = [&](const nlohmann::json& list, const std::string& key) {
      SHARDLORA_CHECK(list.is_array(), config_path, ": key '", key, "' must be a list of token ids");
      std::vector<int64_t> ids;
      for (const auto& id : list) {
        SHARDLORA_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0, config_path, ": key '", key, "' holds ", id.dump());
        ids.push_back(id.get<int64_t>());
      }
      return ids;
    };
    if (indices->is_array()) {
      adapter.trainable_tokens = ids_of(*indices, "trainable_token_indices");
    } else {
      SHARDLORA_CHECK(indices->is_object(), config_path, ": key 'trainable_token_indices' must be a list or an object");
      for (const auto& [module, list] : indices->items()) {
        unsupported_unless("trainable_token_indices", module == "embed_tokens" || module == "lm_head");
        const auto ids = ids_of(list, "trainable_token_indices." + module);
        SHARDLORA_CHECK(adapter.trainable_tokens.empty() || ids == adapter.trainable_tokens, config_path,
                        ": key 'trainable_token_indices' trains other rows of lm_head than of embed_tokens (not supported)");
        adapter.trainable_tokens = ids;
      }
    }
  }
  const auto* targets = field("target_modules");
  SHARDLORA_CHECK(targets, config_path, ": key 'target_modules' is missing");
  if (targets->is_string()) {
    unsupported_unless("target_modules", targets->get<std::string>() == "all-linear");
    adapter.target_modules = {"all-linear"};
  } else {
    SHARDLORA_CHECK(targets->is_array() && !targets->empty(), config_path, ": key 'target_modules' must be a list of module names");
    for (const auto& target : *targets) {
      SHARDLORA_CHECK(target.is_string(), config_path, ": target_modules holds a non-string ", target.dump());
      adapter.target_modules.push_back(target.get<std::string>());
    }
  }
  if (const auto* base = field("base_model_name_or_path"); base && base->is_string()) adapter.base_model_name_or_path = base->get<std::string>();

  const std::string weights_path = dir + "/" + kAdapterWeightsFile;
  for (auto& [name, tensor] : io::read_tensor_file(weights_path)) {
    SHARDLORA_CHECK(is_float_type(tensor.scalar_type()), weights_path, ": tensor '", name, "' has dtype ",
                    safetensors_dtype_name(tensor.scalar_type()));
    // An adapter of a multimodal model saved by transformers < 4.52 names its modules as
    // Gemma 3 was published ("language_model.model.layers..."): keyed by module name here.
    const std::string prefix = "base_model.model.";
    const std::string key = name.rfind(prefix, 0) == 0 ? prefix + module_name_of(name.substr(prefix.size())) : name;
    SHARDLORA_CHECK(!adapter.tensors.count(key), weights_path, ": tensor '", name, "' is there under two names");
    adapter.tensors[key] = tensor.to(torch::kFloat32);
  }
  return adapter;
}

void copy_adapter_tensors(const AdaptedLinear& linear, const std::string& module_path, const PeftAdapter& adapter,
                          const std::string& label, std::set<std::string>& used) {
  SHARDLORA_CHECK(linear->lora().r == adapter.lora.r, label, ": the model's adapters have r = ", linear->lora().r,
                  ", the adapter's ", adapter.lora.r);
  SHARDLORA_CHECK(linear->lora().use_dora == adapter.lora.use_dora, label, ": the adapter has use_dora = ",
                  adapter.lora.use_dora ? "true" : "false", ", the model's adapters ", linear->lora().use_dora ? "use DoRA" : "do not");
  torch::NoGradGuard no_grad;
  for (const auto& [suffix, parameter] : linear->adapter_tensors()) {
    const std::string key = peft_key(module_path, suffix);
    const auto it = adapter.tensors.find(key);
    SHARDLORA_CHECK(it != adapter.tensors.end(), label, ": missing tensor '", key, "'");
    SHARDLORA_CHECK(it->second.sizes() == parameter.sizes(), label, ": tensor '", key, "' has shape ", shape_text(it->second.sizes()),
                    ", the module needs ", shape_text(parameter.sizes()), " (r = ", adapter.lora.r, ")");
    parameter.copy_(it->second);
    used.insert(key);
  }
}

void set_adapter_options(const PeftAdapter& adapter, ModelOptions& options) {
  options.lora = adapter.lora;
  options.target_modules = adapter.target_modules;
  options.trainable_tokens = adapter.trainable_tokens;
  for (const int64_t id : adapter.trainable_tokens) options.vocab_size = std::max(options.vocab_size, id + 1);
  options.modules_to_save = adapter.modules_to_save;
  // A matrix saved whole has the vocabulary it was trained with.
  for (const auto& [key, tensor] : adapter.tensors) {
    const bool whole = key == "base_model.model.lm_head.weight" ||
                       (key.size() > 19 && key.compare(key.size() - 19, 19, "embed_tokens.weight") == 0);
    if (whole && tensor.dim() == 2) options.vocab_size = std::max(options.vocab_size, tensor.size(0));
  }
}

void load_adapter_weights(LlamaModel& model, const PeftAdapter& adapter, const std::string& label) {
  std::set<std::string> used;
  for (auto& [path, linear] : model->linears()) {
    if (linear->has_adapter()) copy_adapter_tensors(linear, path, adapter, label, used);
  }
  SHARDLORA_CHECK(model->trainable_tokens() == adapter.trainable_tokens, label, ": the adapter trains ",
                  adapter.trainable_tokens.size(), " token rows (trainable_token_indices), the model ", model->trainable_tokens().size(),
                  " (data.add_special_tokens?)");
  torch::NoGradGuard no_grad;
  SHARDLORA_CHECK(model->saved_modules().size() == adapter.modules_to_save.size(), label, ": the adapter trains ",
                  adapter.modules_to_save.size(), " whole modules (modules_to_save), the model ", model->saved_modules().size(),
                  " (lora.modules_to_save?)");
  // The adapter's tensor `key` into `into`, shape-checked; a missing one is an error if required.
  const auto copy_tensor = [&](const std::string& key, const torch::Tensor& into, bool required) {
    const auto it = adapter.tensors.find(key);
    SHARDLORA_CHECK(it != adapter.tensors.end() || !required, label, ": missing tensor '", key, "'");
    if (it == adapter.tensors.end()) return;
    SHARDLORA_CHECK(it->second.sizes() == into.sizes(), label, ": tensor '", key, "' has shape ", shape_text(it->second.sizes()),
                    ", the model needs ", shape_text(into.sizes()));
    into.copy_(it->second);
    used.insert(key);
  };
  for (const auto& [module, weight] : model->saved_modules()) copy_tensor(saved_module_key(model->config(), module), weight, true);
  // PEFT writes no lm_head rows for an untied lm_head it was not asked to train: they stay the base's.
  for (const auto& [lm_head, rows] : {std::pair{false, model->embed_token_rows()}, std::pair{true, model->lm_head_token_rows()}}) {
    if (rows.defined()) copy_tensor(token_rows_key(model->config(), lm_head), rows, !lm_head);
  }
  for (const auto& [key, tensor] : adapter.tensors) {
    SHARDLORA_CHECK(used.count(key), label, ": tensor '", key, "' matches no adapted module of the model (target_modules?)");
  }
}

}  // namespace shardlora::nn
