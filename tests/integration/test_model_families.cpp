// Each model family through every command, as a user runs them: `init-model --preset` writes
// the family's layout, `quantize` keeps its extra tensors float, `train` fits an adapter on
// the 4-bit base, `merge` gives the logits of base + adapter, `generate` decodes with the
// adapter. (The family's maths is checked against an fp64 reference in test_llama_parity.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

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
};

}  // namespace

TEST_F(ModelFamilies, Qwen3InitQuantizeTrainMergeGenerate) {
  ASSERT_EQ(shardlora({"init-model", path("qwen3"), "--preset", "qwen3-tiny", "--dtype", "fp32"}).exit_code, 0);
  const auto config = io::read_json_file(path("qwen3/config.json"));
  EXPECT_EQ(config["model_type"], "qwen3");
  EXPECT_EQ(config["head_dim"], 24) << "not hidden / heads = 16";
  const auto tensors = io::read_tensor_file(path("qwen3/model.safetensors"));
  EXPECT_TRUE(tensors.count("model.layers.1.self_attn.k_norm.weight"));
  EXPECT_FALSE(tensors.count("lm_head.weight")) << "tied to embed_tokens";

  const auto quantized = shardlora({"quantize", path("qwen3"), path("nf4")});
  ASSERT_EQ(quantized.exit_code, 0) << quantized.err;
  const auto nf4 = io::read_tensor_file(path("nf4/model.safetensors"));
  EXPECT_TRUE(torch::isFloatingType(nf4.at("model.layers.0.self_attn.q_norm.weight").scalar_type())) << "norms stay float";
  EXPECT_EQ(nf4.at("model.layers.0.self_attn.q_norm.weight").numel(), 24);
  EXPECT_EQ(nf4.at("model.layers.0.self_attn.q_proj.weight").scalar_type(), torch::kUInt8) << "the linears are 4-bit";

  std::ofstream data(path("chat.jsonl"));
  for (int i = 0; i < 12; ++i) {
    data << R"({"messages": [{"role": "user", "content": "say )" << i << R"("}, {"role": "assistant", "content": ")" << i
         << R"("}]})" << "\n";
  }
  data.close();
  std::ofstream(path("recipe.yaml")) << "model:\n  path: " << path("nf4") << "\n  dtype: fp32\n"
                                     << "data:\n  train: " << path("chat.jsonl") << "\n  template: chatml\n  max_seq_len: 64\n"
                                     << "lora:\n  r: 4\noptimizer:\n  lr: 5.0e-2\nschedule:\n  warmup_steps: 0\n"
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
  EXPECT_LT(losses.back(), losses.front()) << "the adapter learns on the 4-bit Qwen3 base";
  const auto adapter_config = io::read_json_file(path("run/adapter/adapter_config.json"));
  EXPECT_EQ(adapter_config["target_modules"].size(), 7u) << adapter_config.dump();

  const auto merged = shardlora({"merge", path("nf4"), path("run/adapter"), path("merged"), "--dtype", "fp32"});
  ASSERT_EQ(merged.exit_code, 0) << merged.err;
  EXPECT_TRUE(io::read_tensor_file(path("merged/model.safetensors")).count("model.layers.0.self_attn.k_norm.weight"));
  const torch::Tensor expected = logits(path("nf4"), path("run/adapter")), got = logits(path("merged"), "");
  EXPECT_TRUE(torch::allclose(got, expected, 1e-4, 1e-4)) << "max difference " << (got - expected).abs().max().item<double>();
  EXPECT_FALSE(torch::allclose(expected, logits(path("nf4"), ""), 1e-3, 1e-3)) << "the adapter changed nothing";

  const auto generated = shardlora({"generate", path("nf4"), "--adapter", path("run/adapter"), "--template", "chatml", "--prompt",
                                    "say 3", "--max-new-tokens", "4"});
  ASSERT_EQ(generated.exit_code, 0) << generated.err;
}
