// LoRA adapters in PEFT's on-disk format (FORMATS.md §4.1-4.3), so an adapter trained here
// loads with PeftModel.from_pretrained and one trained with PEFT loads here:
//   adapter_config.json        peft_type LORA, r, lora_alpha, lora_dropout, target_modules, ...
//   adapter_model.safetensors  base_model.model.<module path>.lora_A.weight [r, in], .lora_B.weight [out, r]
//                              and with DoRA (use_dora) .lora_magnitude_vector [out];
//                              with trainable_token_indices, <decoder>embed_tokens and an
//                              untied lm_head's .token_adapter.trainable_tokens_delta [tokens, hidden];
//                              with modules_to_save, <decoder>embed_tokens.weight, lm_head.weight
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "shardlora/nn/llama.h"

namespace shardlora::nn {

constexpr const char kAdapterConfigFile[] = "adapter_config.json";
constexpr const char kAdapterWeightsFile[] = "adapter_model.safetensors";

struct PeftAdapter {
  LoraOptions lora;
  std::vector<std::string> target_modules;  // short names: q_proj, ..., down_proj
  std::string base_model_name_or_path;
  std::vector<int64_t> trainable_tokens;  // trainable_token_indices (one set for embed_tokens and lm_head)
  std::vector<std::string> modules_to_save;  // embed_tokens, lm_head: saved whole
  std::map<std::string, torch::Tensor> tensors;  // by PEFT key
};

// base_model.model.<module path>.<suffix>, a suffix of AdaptedLinear::adapter_tensors
std::string peft_key(const std::string& module_path, const std::string& suffix);
// The trained token rows of embed_tokens or lm_head at `module_path` (a TrainableTokensWrapper's
// token_adapter): base_model.model.<module path>.token_adapter.trainable_tokens_delta
std::string peft_token_rows_key(const std::string& module_path);

// Writes both files into `dir` (created if needed), each atomically (temporary file + rename).
void save_peft_adapter(const LlamaModel& model, const std::string& dir, const std::string& base_model_name_or_path);

// Reads and validates both files; features shardlora does not implement (rank or alpha
// patterns, regex targets, modules_to_save, bias other than "none") are errors naming the key.
PeftAdapter read_peft_adapter(const std::string& dir);

// What a model must be built with to take `adapter`: its LoRA options, targets, trainable
// tokens and a vocabulary holding them.
void set_adapter_options(const PeftAdapter& adapter, ModelOptions& options);

// Copies the adapter's tensors into a model built with set_adapter_options.
// Every adapted module needs its tensors with shapes that agree with r and the module;
// missing or extra keys, or DoRA on one side only, are errors naming the file and key.
void load_adapter_weights(LlamaModel& model, const PeftAdapter& adapter, const std::string& label);

// The same for one module at `module_path`, recording the keys it took in `used`.
void copy_adapter_tensors(const AdaptedLinear& linear, const std::string& module_path, const PeftAdapter& adapter,
                          const std::string& label, std::set<std::string>& used);

}  // namespace shardlora::nn
