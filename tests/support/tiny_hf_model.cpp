#include "tiny_hf_model.h"

#include <torch/torch.h>

#include <fstream>

#include "shardlora/nn/hf_loader.h"
#include "shardlora/nn/peft_adapter.h"
#include "shardlora/nn/random_model.h"

namespace shardlora::testing {

std::map<std::string, torch::Tensor> write_tiny_hf_model(const std::string& dir, const TinyModelOptions& options) {
  const int64_t heads = 4;
  nn::RandomModelSpec spec{.vocab = options.vocab, .hidden = options.hidden, .intermediate = options.intermediate,
                           .layers = options.layers, .heads = heads, .kv_heads = options.kv_hidden / (options.hidden / heads),
                           .dtype = options.dtype, .seed = options.seed, .sharded = options.sharded, .tokenizer = false};
  auto tensors = nn::write_random_hf_model(dir, spec);
  std::ofstream(dir + "/tokenizer.json") << R"({"version": "1.0", "model": {"type": "BPE"}})";  // a file to copy
  return tensors;
}

void write_random_adapter(const std::string& base_dir, const std::string& adapter_dir, double alpha, double scale,
                          uint64_t seed, bool dora) {
  nn::ModelOptions options;
  options.compute_dtype = torch::kFloat32;
  options.quantize_base = false;
  options.lora = {.r = 4, .alpha = alpha, .use_dora = dora};
  options.target_modules = {"q_proj", "v_proj", "down_proj"};
  auto trained = nn::load_hf_model(base_dir, options);
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  for (auto& [path, linear] : trained->linears()) {
    if (!linear->has_adapter()) continue;
    linear->lora_A.normal_(0, scale);
    linear->lora_B.normal_(0, scale);
    if (dora) linear->lora_magnitude_vector.mul_(torch::empty_like(linear->lora_magnitude_vector).uniform_(0.5, 1.5));
  }
  nn::save_peft_adapter(trained, adapter_dir, base_dir);
}

torch::Tensor model_logits(const std::string& model_dir, const std::string& adapter_dir, int64_t vocab) {
  nn::ModelOptions options;
  options.compute_dtype = torch::kFloat32;
  options.quantize_base = false;
  std::optional<nn::PeftAdapter> adapter;
  if (!adapter_dir.empty()) {
    adapter = nn::read_peft_adapter(adapter_dir);
    nn::set_adapter_options(*adapter, options);
  }
  auto model = nn::load_hf_model(model_dir, options);
  if (adapter) nn::load_adapter_weights(model, *adapter, adapter_dir);
  model->eval();
  torch::NoGradGuard no_grad;
  torch::manual_seed(2);
  return model->forward(torch::randint(vocab, {2, 7}, torch::kInt64));
}

}  // namespace shardlora::testing
