// PEFT adapter files: save -> read -> load gives identical logits; keys and config fields
// are PEFT's; inconsistent adapters fail naming the file, key and shapes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/io/safetensors.h"
#include "shardlora/io/tensor_file.h"
#include "shardlora/kernels/check.h"
#include "shardlora/nn/hf_loader.h"
#include "shardlora/nn/peft_adapter.h"
#include "temp_dir.h"
#include "tiny_hf_model.h"

using namespace shardlora;
namespace fs = std::filesystem;

namespace {

class PeftAdapterFiles : public shardlora::testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    shardlora::testing::write_tiny_hf_model(path("base"));
  }

  nn::LlamaModel adapted_model(const nn::LoraOptions& lora, std::vector<std::string> targets) {
    nn::ModelOptions options;
    options.compute_dtype = torch::kFloat32;
    options.lora = lora;
    options.target_modules = std::move(targets);
    return nn::load_hf_model(path("base"), options);
  }
};

std::string load_error(nn::LlamaModel& model, const nn::PeftAdapter& adapter) {
  try {
    nn::load_adapter_weights(model, adapter, "adapter-dir");
  } catch (const Error& error) {
    return error.what();
  }
  return "no error";
}

}  // namespace

TEST_F(PeftAdapterFiles, SaveReadLoadGivesIdenticalLogits) {
  const nn::LoraOptions lora{.r = 4, .alpha = 8, .dropout = 0.05, .use_rslora = true};
  auto trained = adapted_model(lora, {"q_proj", "v_proj", "down_proj"});
  {
    torch::NoGradGuard no_grad;
    for (auto& parameter : trained->parameters()) parameter.normal_(0, 0.1);  // as if trained
  }
  nn::save_peft_adapter(trained, path("adapter"), "tiny-llama");

  const auto config = io::read_json_file(path("adapter/adapter_config.json"));
  EXPECT_EQ(config["peft_type"], "LORA");
  EXPECT_EQ(config["r"], 4);
  EXPECT_EQ(config["lora_alpha"], 8.0);
  EXPECT_EQ(config["use_rslora"], true);
  EXPECT_EQ(config["bias"], "none");
  EXPECT_EQ(config["task_type"], "CAUSAL_LM");
  EXPECT_EQ(config["base_model_name_or_path"], "tiny-llama");
  EXPECT_EQ(config["target_modules"], nlohmann::json({"down_proj", "q_proj", "v_proj"}));
  const io::SafetensorsFile weights(path("adapter/adapter_model.safetensors"));
  EXPECT_EQ(weights.header().tensors.size(), 2u * 3 * 2);
  EXPECT_EQ(weights.info("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").shape, (std::vector<int64_t>{4, 64}));
  EXPECT_EQ(weights.info("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").shape, (std::vector<int64_t>{64, 4}));
  EXPECT_EQ(weights.info("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").dtype, "F32");

  const nn::PeftAdapter adapter = nn::read_peft_adapter(path("adapter"));
  EXPECT_EQ(adapter.lora.r, 4);
  EXPECT_DOUBLE_EQ(adapter.lora.dropout, 0.05);
  auto loaded = adapted_model(adapter.lora, adapter.target_modules);
  nn::load_adapter_weights(loaded, adapter, path("adapter"));
  trained->eval();
  loaded->eval();
  const torch::Tensor ids = torch::randint(48, {2, 9}, torch::kInt64);
  EXPECT_TRUE(torch::equal(trained->forward(ids), loaded->forward(ids)));
}

// DoRA's magnitudes are saved as PEFT saves them (no ".weight") and come back exactly.
TEST_F(PeftAdapterFiles, DoraAdapterSavesItsMagnitudesAndLoadsBackToTheSameLogits) {
  const nn::LoraOptions lora{.r = 4, .alpha = 8, .use_dora = true};
  auto trained = adapted_model(lora, {"q_proj", "down_proj"});
  {
    torch::NoGradGuard no_grad;
    for (auto& parameter : trained->parameters()) parameter.add_(torch::randn_like(parameter) * 0.1);
  }
  nn::save_peft_adapter(trained, path("adapter"), "tiny-llama");
  EXPECT_EQ(io::read_json_file(path("adapter/adapter_config.json"))["use_dora"], true);
  const io::SafetensorsFile weights(path("adapter/adapter_model.safetensors"));
  EXPECT_EQ(weights.header().tensors.size(), 3u * 2 * 2);
  EXPECT_EQ(weights.info("base_model.model.model.layers.1.mlp.down_proj.lora_magnitude_vector").shape, (std::vector<int64_t>{64}));

  const nn::PeftAdapter adapter = nn::read_peft_adapter(path("adapter"));
  EXPECT_TRUE(adapter.lora.use_dora);
  auto loaded = adapted_model(adapter.lora, adapter.target_modules);
  nn::load_adapter_weights(loaded, adapter, path("adapter"));
  trained->eval();
  loaded->eval();
  const torch::Tensor ids = torch::randint(48, {2, 9}, torch::kInt64);
  const torch::Tensor logits = trained->forward(ids);
  EXPECT_TRUE(torch::equal(logits, loaded->forward(ids)));
  // Without its magnitudes, or into a model without DoRA, the adapter is refused.
  auto fresh = adapted_model(lora, {"q_proj", "down_proj"});
  auto without = adapter;
  for (auto it = without.tensors.begin(); it != without.tensors.end();) {
    it = it->first.find("lora_magnitude_vector") != std::string::npos ? without.tensors.erase(it) : std::next(it);
  }
  EXPECT_NE(load_error(fresh, without).find("missing tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector'"),
            std::string::npos);
  auto plain = adapted_model({.r = 4, .alpha = 8}, {"q_proj", "down_proj"});
  EXPECT_NE(load_error(plain, adapter).find("use_dora = true, the model's adapters do not"), std::string::npos);
}

TEST_F(PeftAdapterFiles, InconsistentAdaptersAreNamed) {
  auto model = adapted_model({.r = 4, .alpha = 8}, {"q_proj", "v_proj"});
  nn::save_peft_adapter(model, path("adapter"), "tiny");
  nn::PeftAdapter adapter = nn::read_peft_adapter(path("adapter"));

  auto wrong_r = adapted_model({.r = 8, .alpha = 8}, {"q_proj", "v_proj"});
  EXPECT_NE(load_error(wrong_r, adapter).find("the model's adapters have r = 8, the adapter's 4"), std::string::npos);
  auto lying = adapter;
  lying.tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = torch::zeros({4, 63});
  EXPECT_NE(load_error(model, lying).find("q_proj.lora_A.weight' has shape [4, 63], the module needs [4, 64]"), std::string::npos)
      << load_error(model, lying);
  auto missing = adapter;
  missing.tensors.erase("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
  EXPECT_NE(load_error(model, missing).find("missing tensor 'base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight'"),
            std::string::npos);
  auto fewer_targets = adapted_model({.r = 4, .alpha = 8}, {"q_proj"});
  EXPECT_NE(load_error(fewer_targets, adapter).find("matches no adapted module"), std::string::npos);

  const auto rewrite_config = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto config = io::read_json_file(path("adapter/adapter_config.json"));
    edit(config);
    std::ofstream(path("adapter/adapter_config.json")) << config.dump();
  };
  const auto read_error = [&]() {
    try {
      nn::read_peft_adapter(path("adapter"));
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  rewrite_config([](nlohmann::json& c) { c["fan_in_fan_out"] = true; });
  EXPECT_NE(read_error().find("adapter_config.json: key 'fan_in_fan_out' = true is not supported"), std::string::npos) << read_error();
  rewrite_config([](nlohmann::json& c) { c["fan_in_fan_out"] = false; c["use_dora"] = true; });
  EXPECT_NE(load_error(model, nn::read_peft_adapter(path("adapter"))).find("the adapter has use_dora = true, the model's adapters do not"),
            std::string::npos);
  rewrite_config([](nlohmann::json& c) { c["use_dora"] = false; c["peft_type"] = "IA3"; });
  EXPECT_NE(read_error().find("peft_type must be \"LORA\""), std::string::npos);
  rewrite_config([](nlohmann::json& c) { c["peft_type"] = "LORA"; c["target_modules"] = ".*proj"; });
  EXPECT_NE(read_error().find("key 'target_modules' = \".*proj\" is not supported"), std::string::npos);
  rewrite_config([](nlohmann::json& c) { c["target_modules"] = {"q_proj"}; c["layers_to_transform"] = {0}; });
  EXPECT_NE(read_error().find("key 'layers_to_transform' = [0] is not supported"), std::string::npos) << read_error();
  rewrite_config([](nlohmann::json& c) { c.erase("layers_to_transform"); c["lora_bias"] = true; });
  EXPECT_NE(read_error().find("key 'lora_bias' = true is not supported"), std::string::npos) << read_error();
  rewrite_config([](nlohmann::json& c) { c.erase("lora_bias"); c["trainable_token_indices"] = {{"embed_tokens", {3}}, {"lm_head", {4}}}; });
  EXPECT_NE(read_error().find("trains other rows of lm_head than of embed_tokens"), std::string::npos) << read_error();
  rewrite_config([](nlohmann::json& c) { c["trainable_token_indices"] = {{"q_proj", {3}}}; });
  EXPECT_NE(read_error().find("key 'trainable_token_indices' = {\"q_proj\":[3]} is not supported"), std::string::npos) << read_error();
  rewrite_config([](nlohmann::json& c) { c["trainable_token_indices"] = nullptr; c["modules_to_save"] = {"score"}; });
  EXPECT_NE(read_error().find("key 'modules_to_save' = [\"score\"] is not supported"), std::string::npos) << read_error();
  rewrite_config([](nlohmann::json& c) { c["modules_to_save"] = {"lm_head"}; });
  EXPECT_NE(load_error(model, nn::read_peft_adapter(path("adapter"))).find("the adapter trains 1 whole modules"), std::string::npos);
  rewrite_config([](nlohmann::json& c) { c["modules_to_save"] = nullptr; c["trainable_token_indices"] = {5, 6}; });
  EXPECT_NE(load_error(model, nn::read_peft_adapter(path("adapter"))).find("the adapter trains 2 token rows"), std::string::npos);
  rewrite_config([](nlohmann::json& c) { c.erase("trainable_token_indices"); c.erase("r"); });
  EXPECT_NE(read_error().find("key 'r' must be a positive integer"), std::string::npos);
}

// An adapter as PEFT 0.17 writes it: every LoraConfig field (the newer ones at their
// defaults), target_modules in PEFT's set order, bf16 tensors, {"format": "pt"} metadata.
TEST_F(PeftAdapterFiles, LoadsAnAdapterWrittenByPeft) {
  fs::create_directories(path("peft"));
  std::ofstream(path("peft/adapter_config.json")) << R"({
  "alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
  "bias": "none", "corda_config": null, "eva_config": null, "exclude_modules": null, "fan_in_fan_out": false,
  "inference_mode": true, "init_lora_weights": true, "layer_replication": null, "layers_pattern": null,
  "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 32, "lora_bias": false, "lora_dropout": 0.05,
  "megatron_config": null, "megatron_core": "megatron.core", "modules_to_save": null, "peft_type": "LORA",
  "qalora_group_size": 16, "r": 8, "rank_pattern": {}, "revision": null, "target_modules": ["v_proj", "q_proj"],
  "target_parameters": null, "task_type": "CAUSAL_LM", "trainable_token_indices": null, "use_dora": false,
  "use_qalora": false, "use_rslora": false
})";
  torch::manual_seed(4);
  std::map<std::string, torch::Tensor> tensors;
  for (int layer = 0; layer < 2; ++layer) {
    for (const auto& [module, out] : {std::pair<std::string, int64_t>{"q_proj", 64}, {"v_proj", 32}}) {
      const std::string path = "model.layers." + std::to_string(layer) + ".self_attn." + module;
      tensors[nn::peft_key(path, "lora_A.weight")] = torch::randn({8, 64}).to(torch::kBFloat16);
      tensors[nn::peft_key(path, "lora_B.weight")] = torch::randn({out, 8}).to(torch::kBFloat16);
    }
  }
  io::write_tensor_file(path("peft/adapter_model.safetensors"), tensors);

  const nn::PeftAdapter adapter = nn::read_peft_adapter(path("peft"));
  EXPECT_EQ(adapter.lora.r, 8);
  EXPECT_DOUBLE_EQ(adapter.lora.scaling(), 4.0);
  EXPECT_EQ(adapter.base_model_name_or_path, "TinyLlama/TinyLlama-1.1B-Chat-v1.0");
  auto model = adapted_model(adapter.lora, adapter.target_modules);
  nn::load_adapter_weights(model, adapter, path("peft"));
  for (const auto& [module_path, linear] : model->linears()) {
    if (!linear->has_adapter()) continue;
    EXPECT_TRUE(torch::equal(linear->lora_A, tensors.at(nn::peft_key(module_path, "lora_A.weight")).to(torch::kFloat32))) << module_path;
    EXPECT_TRUE(torch::equal(linear->lora_B, tensors.at(nn::peft_key(module_path, "lora_B.weight")).to(torch::kFloat32))) << module_path;
  }
}
