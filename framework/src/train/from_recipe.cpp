#include "shardlora/train/from_recipe.h"

#include <set>

#include "shardlora/kernels/check.h"

namespace shardlora::train {

data::ChatTemplate chat_template_from(const Recipe& recipe, const std::string& model_dir, const data::Tokenizer& tokenizer) {
  const std::string name = recipe.get_string("data.template");
  if (name != "custom") return data::resolve_chat_template(name, model_dir, tokenizer);
  const auto text = [&](const char* key) { return recipe.get_string(std::string("data.custom_template.") + key); };
  data::ChatTemplate custom;
  custom.name = "custom";
  custom.begin = text("begin");
  for (const char* role : {"system", "user", "assistant"}) {
    custom.roles[role] = {text((std::string(role) + "_prefix").c_str()), text((std::string(role) + "_suffix").c_str())};
  }
  return custom;
}

data::DatasetOptions dataset_options_from(const Recipe& recipe, const std::string& path) {
  data::DatasetOptions options;
  options.path = path;
  options.format = data::dataset_format_from_name(recipe.get_string("data.format"));
  data::FieldMap& f = options.fields;
  f.instruction = recipe.get_string("data.fields.instruction");
  f.input = recipe.get_string("data.fields.input");
  f.output = recipe.get_string("data.fields.output");
  f.messages = recipe.get_string("data.fields.messages");
  f.role = recipe.get_string("data.fields.role");
  f.content = recipe.get_string("data.fields.content");
  f.text = recipe.get_string("data.fields.text");
  f.input_ids = recipe.get_string("data.fields.input_ids");
  f.labels = recipe.get_string("data.fields.labels");
  return options;
}

data::LoaderOptions loader_options_from(const Recipe& recipe, const data::ChatTemplate* chat_template) {
  data::LoaderOptions options;
  options.micro_batch_size = recipe.get_int("training.micro_batch_size");
  options.max_seq_len = recipe.get_int("data.max_seq_len");
  options.packing = recipe.get_bool("data.packing");
  options.over_length = recipe.get_string("data.over_length") == "drop" ? data::OverLength::Drop : data::OverLength::Truncate;
  options.skip_malformed = recipe.get_string("data.on_error") == "skip";
  options.prompt = {chat_template, recipe.get_bool("data.train_on_prompt"), static_cast<size_t>(options.max_seq_len) + 1};
  return options;
}

nn::ModelOptions model_options_from(const Recipe& recipe) {
  nn::ModelOptions options;
  options.compute_dtype = recipe.get_string("model.dtype") == "fp32" ? torch::kFloat32 : torch::kBFloat16;
  const std::string quant_type = recipe.get_string("model.quantization.type");
  options.quantize_base = quant_type != "none";
  options.quant.type = quant_type == "fp4" ? kernels::QuantType::FP4 : kernels::QuantType::NF4;
  options.quant.blocksize = std::stoll(recipe.get_string("model.quantization.blocksize"));
  options.quant.double_quant = recipe.get_bool("model.quantization.double_quant");
  options.lora = {.r = recipe.get_int("lora.r"), .alpha = recipe.get_float("lora.alpha"),
                  .dropout = recipe.get_float("lora.dropout"), .use_rslora = recipe.get_bool("lora.rslora"),
                  .use_dora = recipe.get_bool("lora.use_dora")};
  options.target_modules = recipe.get_strings("lora.target_modules");
  options.modules_to_save = recipe.get_strings("lora.modules_to_save");
  options.activation_checkpointing = recipe.get_bool("training.activation_checkpointing");
  options.neftune_alpha = recipe.get_float("training.neftune_alpha");
  return options;
}

optim::AdamWOptions adamw_options_from(const Recipe& recipe, int64_t total_steps, const nn::LlamaModel& model) {
  optim::AdamWOptions adamw;
  // LoRA+ (PEFT's create_loraplus_optimizer): the B matrices, and every 1-D parameter (DoRA's
  // magnitudes), learn at ratio x the rate.
  if (const double ratio = recipe.get_float("optimizer.loraplus_lr_ratio"); ratio > 0) {
    std::set<const void*> b_matrices;
    for (const auto& [path, linear] : model->linears()) {
      if (linear->lora_B.defined()) b_matrices.insert(linear->lora_B.unsafeGetTensorImpl());
    }
    for (const torch::Tensor& param : model->parameters()) {
      adamw.lr_multipliers.push_back(b_matrices.count(param.unsafeGetTensorImpl()) || param.dim() == 1 ? ratio : 1.0);
    }
  }
  adamw.lr = recipe.get_float("optimizer.lr");
  const auto betas = recipe.get_floats("optimizer.betas");
  adamw.beta1 = betas[0];
  adamw.beta2 = betas[1];
  adamw.eps = recipe.get_float("optimizer.eps");
  adamw.weight_decay = recipe.get_float("optimizer.weight_decay");
  adamw.state_bits = recipe.get_string("optimizer.name") == "paged_adamw_8bit" ? 8 : 32;
  adamw.placement = *optim::placement_from_name(recipe.get_string("optimizer.placement"));
  adamw.staging_pages = recipe.get_int("optimizer.gpu_pages");
  adamw.max_grad_norm = recipe.get_float("training.grad_clip");
  adamw.schedule = lr_schedule_from(recipe, total_steps);
  return adamw;
}

optim::LrSchedule lr_schedule_from(const Recipe& recipe, int64_t total_steps) {
  return {*optim::schedule_type_from_name(recipe.get_string("schedule.type")), recipe.get_int("schedule.warmup_steps"), total_steps};
}

}  // namespace shardlora::train
