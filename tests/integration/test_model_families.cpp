// Each model family through every command, as a user runs them: `init-model --preset` writes
// the family's layout, `quantize` keeps its extra tensors float, `train` fits an adapter on
// the 4-bit base, `merge` gives the logits of base + adapter, `generate` decodes with the
// adapter. (The family's maths is checked against an fp64 reference in test_llama_parity.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "shardlora/data/tokenizer.h"
#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/io/tensor_file.h"
#include "shardlora_paths.h"
#include "subprocess.h"
#include "temp_dir.h"
#include "tiny_hf_model.h"

using namespace shardlora;
using namespace shardlora::testing;
namespace fs = std::filesystem;

namespace {

class ModelFamilies : public TempDirTest {
 protected:
  ProcessResult shardlora(std::vector<std::string> args) {
    args.insert(args.begin(), shardlora_binary());
    return run_process(args, 300.0);
  }

  torch::Tensor logits(const std::string& dir, const std::string& adapter_dir) { return model_logits(dir, adapter_dir, 259); }

  // chat.jsonl and recipe.yaml (data.template left at auto) training `model_dir` into run/.
  // lr 1e-2 (both recipes): at 5e-2 with alpha/r = 8 the tiny Gemma 3 trains into a state where
  // rounding its merged weights to fp32 moves its logits by ~1e-4 (its base moves them ~2e-7).
  void write_chat_recipe(const std::string& model_dir, int steps) {
    std::ofstream data(path("chat.jsonl"));
    for (int i = 0; i < 8; ++i) {
      data << R"({"messages": [{"role": "user", "content": "say )" << i << R"("}, {"role": "assistant", "content": ")" << i << R"("}]})"
           << "\n";
    }
    std::ofstream(path("recipe.yaml")) << "model:\n  path: " << model_dir << "\n  dtype: fp32\n"
                                       << "data:\n  train: " << path("chat.jsonl") << "\n  max_seq_len: 64\n"
                                       << "lora:\n  r: 4\noptimizer:\n  lr: 1.0e-2\ntraining:\n  max_steps: " << steps << "\n"
                                       << "output:\n  dir: " << path("run") << "\n";
  }
};

}  // namespace

struct Family {
  std::string preset;
  std::string own_tensor;  // a tensor only this family's layout has
  size_t linears;          // adapted Linears per layer (PEFT's all-linear)
};

void PrintTo(const Family& family, std::ostream* out) { *out << family.preset; }

class EveryCommand : public ModelFamilies, public ::testing::WithParamInterface<Family> {};

TEST_P(EveryCommand, InitQuantizeTrainMergeGenerate) {
  const Family family = GetParam();
  ASSERT_EQ(shardlora({"init-model", path("model"), "--preset", family.preset, "--dtype", "fp32"}).exit_code, 0);
  const auto tensors = io::read_tensor_file(path("model/model.safetensors"));
  EXPECT_TRUE(tensors.count("model.layers.1." + family.own_tensor)) << family.preset;

  const auto quantized = shardlora({"quantize", path("model"), path("nf4")});
  ASSERT_EQ(quantized.exit_code, 0) << quantized.err;
  const auto nf4 = io::read_tensor_file(path("nf4/model.safetensors"));
  EXPECT_EQ(nf4.at("model.layers.0.self_attn.o_proj.weight").scalar_type(), torch::kUInt8) << "the linears are 4-bit";

  std::ofstream data(path("chat.jsonl"));
  for (int i = 0; i < 12; ++i) {
    data << R"({"messages": [{"role": "user", "content": "say )" << i << R"("}, {"role": "assistant", "content": ")" << i
         << R"("}]})" << "\n";
  }
  data.close();
  std::ofstream(path("recipe.yaml")) << "model:\n  path: " << path("nf4") << "\n  dtype: fp32\n"
                                     << "data:\n  train: " << path("chat.jsonl") << "\n  template: chatml\n  max_seq_len: 64\n"
                                     << "lora:\n  r: 4\noptimizer:\n  lr: 1.0e-2\nschedule:\n  warmup_steps: 0\n"
                                     << "training:\n  max_steps: 6\n  log_every: 1\n"
                                     << "output:\n  dir: " << path("run") << "\n";
  const auto trained = shardlora({"train", path("recipe.yaml")});
  ASSERT_EQ(trained.exit_code, 0) << trained.err;
  std::vector<double> losses;
  std::ifstream metrics(path("run/metrics.jsonl"));
  for (std::string line; std::getline(metrics, line);) {
    const auto json = nlohmann::json::parse(line);
    if (json.contains("loss")) losses.push_back(json["loss"].get<double>());
  }
  ASSERT_GE(losses.size(), 2u);
  EXPECT_LT(losses.back(), losses.front()) << "the adapter learns on the 4-bit base";
  const auto adapter_config = io::read_json_file(path("run/adapter/adapter_config.json"));
  EXPECT_EQ(adapter_config["target_modules"].size(), family.linears) << adapter_config.dump();

  const auto merged = shardlora({"merge", path("nf4"), path("run/adapter"), path("merged"), "--dtype", "fp32"});
  ASSERT_EQ(merged.exit_code, 0) << merged.err;
  EXPECT_TRUE(io::read_tensor_file(path("merged/model.safetensors")).count("model.layers.0." + family.own_tensor));
  const torch::Tensor expected = logits(path("nf4"), path("run/adapter")), got = logits(path("merged"), "");
  EXPECT_TRUE(torch::allclose(got, expected, 1e-4, 1e-4)) << "max difference " << (got - expected).abs().max().item<double>();
  EXPECT_FALSE(torch::allclose(expected, logits(path("nf4"), ""), 1e-3, 1e-3)) << "the adapter changed nothing";

  const auto generated = shardlora({"generate", path("nf4"), "--adapter", path("run/adapter"), "--template", "chatml", "--prompt",
                                    "say 3", "--max-new-tokens", "4"});
  ASSERT_EQ(generated.exit_code, 0) << generated.err;
}

INSTANTIATE_TEST_SUITE_P(Families, EveryCommand,
                         ::testing::Values(Family{"qwen3-tiny", "self_attn.k_norm.weight", 7},
                                           Family{"phi3-tiny", "mlp.gate_up_proj.weight", 4},
                                           Family{"gemma3-tiny", "post_feedforward_layernorm.weight", 7}),
                         [](const ::testing::TestParamInfo<Family>& info) {
                           const std::string& preset = info.param.preset;
                           return preset == "qwen3-tiny" ? std::string("Qwen3") : preset == "phi3-tiny" ? std::string("Phi3") : std::string("Gemma3");
                         });

// A Gemma3ForConditionalGeneration checkpoint: config in text_config, the language model's
// tensors under "language_model.model." as Gemma 3 was published (or "model.language_model."
// as transformers >= 4.52 saves them), a vision tower beside it. Its language model computes
// what the text-only layout does, is quantized while the vision tensors stay float, trains
// with adapters under the names PEFT gives them there, and merges back into the same layout.
TEST_F(ModelFamilies, Gemma3MultimodalCheckpointTrainsItsLanguageModel) {
  ASSERT_EQ(shardlora({"init-model", path("text"), "--preset", "gemma3-tiny", "--dtype", "fp32"}).exit_code, 0);
  nlohmann::json text_config = io::read_json_file(path("text/config.json"));
  text_config.erase("architectures");
  const int64_t hidden = text_config["hidden_size"].get<int64_t>();
  const auto write_multimodal = [&](const std::string& dir, const std::string& decoder, const std::string& lm_head) {
    fs::create_directories(dir);
    std::ofstream(dir + "/config.json") << nlohmann::json({{"architectures", {"Gemma3ForConditionalGeneration"}},
                                                           {"model_type", "gemma3"},
                                                           {"text_config", text_config},
                                                           {"vision_config", {{"model_type", "siglip_vision_model"}, {"hidden_size", 8}}},
                                                           {"mm_tokens_per_image", 4}})
                                               .dump(2);
    std::map<std::string, torch::Tensor> tensors;
    for (auto& [name, tensor] : io::read_tensor_file(path("text/model.safetensors"))) {
      tensors[name.rfind("model.", 0) == 0 ? decoder + name.substr(6) : lm_head + name] = tensor;
    }
    tensors["vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"] = torch::randn({8, 8});
    tensors["multi_modal_projector.mm_input_projection_weight"] = torch::randn({8, hidden});
    io::write_tensor_file(dir + "/model.safetensors", tensors);
    for (const char* file : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(path("text/") + file, dir + "/" + file);
  };
  write_multimodal(path("published"), "language_model.model.", "language_model.");
  write_multimodal(path("saved"), "model.language_model.", "");
  const torch::Tensor text_logits = logits(path("text"), "");
  EXPECT_TRUE(torch::equal(logits(path("published"), ""), text_logits));
  EXPECT_TRUE(torch::equal(logits(path("saved"), ""), text_logits));

  const auto quantized = shardlora({"quantize", path("published"), path("nf4")});
  ASSERT_EQ(quantized.exit_code, 0) << quantized.err;
  const auto nf4 = io::read_tensor_file(path("nf4/model.safetensors"));
  EXPECT_EQ(nf4.at("language_model.model.layers.0.self_attn.o_proj.weight").scalar_type(), torch::kUInt8);
  EXPECT_TRUE(nf4.at("vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight").is_floating_point()) << "not quantized";

  write_chat_recipe(path("nf4"), 3);
  const auto trained = shardlora({"train", path("recipe.yaml")});
  ASSERT_EQ(trained.exit_code, 0) << trained.err;
  const auto adapter = io::read_tensor_file(path("run/adapter/adapter_model.safetensors"));
  EXPECT_TRUE(adapter.count("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"));
  for (const auto& [name, tensor] : adapter) EXPECT_EQ(name.rfind("base_model.model.model.language_model.layers.", 0), 0u) << name;

  const auto merged = shardlora({"merge", path("nf4"), path("run/adapter"), path("merged"), "--dtype", "fp32"});
  ASSERT_EQ(merged.exit_code, 0) << merged.err;
  const auto merged_tensors = io::read_tensor_file(path("merged/model.safetensors"));
  EXPECT_EQ(merged_tensors.at("language_model.model.layers.0.self_attn.q_proj.weight").scalar_type(), torch::kFloat32);
  EXPECT_TRUE(merged_tensors.count("multi_modal_projector.mm_input_projection_weight"));
  const torch::Tensor adapted = logits(path("nf4"), path("run/adapter"));
  EXPECT_TRUE(torch::allclose(logits(path("merged"), ""), adapted, 1e-4, 1e-4));
  EXPECT_FALSE(torch::allclose(adapted, logits(path("nf4"), ""), 1e-3, 1e-3)) << "the adapter changed nothing";

  // An adapter PEFT saved with transformers < 4.52 names the modules as published.
  fs::create_directories(path("legacy"));
  fs::copy_file(path("run/adapter/adapter_config.json"), path("legacy/adapter_config.json"));
  std::map<std::string, torch::Tensor> legacy;
  for (const auto& [name, tensor] : adapter) legacy["base_model.model.language_model.model." + name.substr(38)] = tensor;
  io::write_tensor_file(path("legacy/adapter_model.safetensors"), legacy);
  EXPECT_TRUE(torch::equal(logits(path("nf4"), path("legacy")), adapted));
}

// data.template left out (auto): training and `generate --template auto` format with the
// chat_template.jinja the model ships.
TEST_F(ModelFamilies, TrainAndGenerateUseTheModelsOwnChatTemplate) {
  ASSERT_EQ(shardlora({"init-model", path("model"), "--preset", "qwen3-tiny", "--dtype", "fp32"}).exit_code, 0);
  std::ofstream(path("model/chat_template.jinja"))
      << "{%- for message in messages %}\n    {{- '<|turn|>' + message.role + ': ' + message.content | trim + '</s>\\n' }}\n"
         "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|turn|>assistant: ' }}\n{%- endif %}\n";
  write_chat_recipe(path("model"), 2);
  const auto trained = shardlora({"train", path("recipe.yaml")});
  ASSERT_EQ(trained.exit_code, 0) << trained.err;
  for (const std::string& how : {std::string("--template=auto"), "--recipe=" + path("recipe.yaml")}) {
    const auto generated = shardlora({"generate", path("model"), how, "--prompt", "say 3", "--max-new-tokens", "2", "--json"});
    ASSERT_EQ(generated.exit_code, 0) << generated.err;
    const auto ids = nlohmann::json::parse(generated.out)["prompt_ids"].get<std::vector<int64_t>>();
    EXPECT_EQ(data::load_tokenizer(path("model"))->decode(ids), "<|turn|>user: say 3</s>\n<|turn|>assistant: ") << how;
  }
  // A template error names the file, line and column.
  std::ofstream(path("model/chat_template.jinja")) << "{% for message in messages %}\n{{ message.content }\n";
  const auto broken = shardlora({"train", path("recipe.yaml"), "output.dir=" + path("run2")});
  EXPECT_NE(broken.exit_code, 0);
  EXPECT_NE(broken.err.find("model/chat_template.jinja:2:1: the tag is not closed (no '}}')"), std::string::npos) << broken.err;
}

TEST_F(ModelFamilies, PresetsWriteTheFamiliesConfigs) {
  ASSERT_EQ(shardlora({"init-model", path("qwen3"), "--preset", "qwen3-tiny"}).exit_code, 0);
  const auto qwen3 = io::read_json_file(path("qwen3/config.json"));
  EXPECT_EQ(qwen3["model_type"], "qwen3");
  EXPECT_EQ(qwen3["head_dim"], 24) << "not hidden / heads = 16";
  EXPECT_FALSE(io::read_tensor_file(path("qwen3/model.safetensors")).count("lm_head.weight")) << "tied to embed_tokens";
  ASSERT_EQ(shardlora({"init-model", path("phi3"), "--preset", "phi3-tiny"}).exit_code, 0);
  const auto phi3 = io::read_json_file(path("phi3/config.json"));
  EXPECT_EQ(phi3["architectures"][0], "Phi3ForCausalLM");
  EXPECT_EQ(phi3["partial_rotary_factor"], 0.75);
  const auto tensors = io::read_tensor_file(path("phi3/model.safetensors"));
  EXPECT_EQ(tensors.at("model.layers.0.self_attn.qkv_proj.weight").sizes(), (std::vector<int64_t>{64 + 2 * 32, 64}));
  EXPECT_EQ(tensors.at("model.layers.0.mlp.gate_up_proj.weight").sizes(), (std::vector<int64_t>{2 * 128, 64}));
  EXPECT_FALSE(tensors.count("model.layers.0.self_attn.q_proj.weight"));
}
