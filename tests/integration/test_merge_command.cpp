// `shardlora merge`: the merged float checkpoint computes what base + adapter computes, for a
// float base and for a bnb 4-bit base; the output is a plain HF directory; a mismatched
// adapter fails naming the key and leaves nothing behind.
#include <gtest/gtest.h>

#include <filesystem>

#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/io/tensor_file.h"
#include "shardlora/nn/hf_loader.h"
#include "shardlora/nn/peft_adapter.h"
#include "shardlora/quant/checkpoint_quantizer.h"
#include "shardlora_paths.h"
#include "subprocess.h"
#include "temp_dir.h"
#include "tiny_hf_model.h"

using namespace shardlora;
using namespace shardlora::testing;
namespace fs = std::filesystem;

namespace {

class MergeCommand : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    write_tiny_hf_model(path("base"));
    quant::quantize_checkpoint(path("base"), path("nf4"), {});
    write_random_adapter(path("base"), path("adapter"), 8, 0.3, 5);
  }

  ProcessResult merge(std::vector<std::string> args) {
    args.insert(args.begin(), {shardlora_binary(), "merge"});
    return run_process(args, 120.0);
  }

  // Logits of `dir` as stored, with the adapter or without.
  torch::Tensor logits(const std::string& dir, bool with_adapter) { return model_logits(dir, with_adapter ? path("adapter") : "", 48); }
};

}  // namespace

TEST_F(MergeCommand, MergedFloatModelComputesBasePlusAdapter) {
  for (const std::string base : {"base", "nf4"}) {
    const std::string out = path("merged_" + base);
    const auto result = merge({path(base), path("adapter"), out, "--dtype", "fp32"});
    ASSERT_EQ(result.exit_code, 0) << result.err;
    EXPECT_NE(result.out.find("6 adapted weights merged"), std::string::npos) << result.out;  // 3 modules x 2 layers
    const auto config = io::read_json_file(out + "/config.json");
    EXPECT_FALSE(config.contains("quantization_config")) << base;
    EXPECT_EQ(config["torch_dtype"], "float32");
    const torch::Tensor expected = logits(path(base), /*with_adapter=*/true);
    const torch::Tensor merged = logits(out, /*with_adapter=*/false);
    EXPECT_TRUE(torch::allclose(merged, expected, 1e-4, 1e-4)) << base << ": max difference "
                                                               << (merged - expected).abs().max().item<double>();
    EXPECT_FALSE(torch::allclose(merged, logits(path(base), false), 1e-3, 1e-3)) << "the adapter changed nothing";
  }
  // bf16 by default.
  ASSERT_EQ(merge({path("nf4"), path("adapter"), path("merged_bf16")}).exit_code, 0);
  EXPECT_EQ(io::read_json_file(path("merged_bf16/config.json"))["torch_dtype"], "bfloat16");
}

// PEFT's DoRA merge, W' = (m / ||W + dW||_row) (W + dW), computes base + DoRA adapter.
TEST_F(MergeCommand, MergedDoraAdapterComputesBasePlusAdapter) {
  write_random_adapter(path("base"), path("dora"), 8, 0.3, 5, /*dora=*/true);
  for (const std::string base : {"base", "nf4"}) {
    const std::string out = path("dora_" + base);
    const auto result = merge({path(base), path("dora"), out, "--dtype", "fp32"});
    ASSERT_EQ(result.exit_code, 0) << result.err;
    const torch::Tensor expected = model_logits(path(base), path("dora"), 48);
    const torch::Tensor merged = logits(out, /*with_adapter=*/false);
    EXPECT_TRUE(torch::allclose(merged, expected, 1e-4, 1e-4)) << base << ": max difference "
                                                               << (merged - expected).abs().max().item<double>();
    EXPECT_FALSE(torch::allclose(expected, logits(path(base), /*with_adapter=*/true), 1e-3, 1e-3)) << "DoRA computes what LoRA with its A and B does";
  }
}

TEST_F(MergeCommand, AnOutputOverItsBaseOrAdapterIsRefusedEvenWithForce) {
  const std::string base = read_file(path("base/model.safetensors")), adapter = read_file(path("adapter/adapter_model.safetensors"));
  for (const auto& [out, what] : {std::pair{path("base"), "its input checkpoint"}, std::pair{path("adapter"), "the adapter"},
                                  std::pair{path("adapter/merged"), "the adapter"}}) {
    const auto result = merge({path("base"), path("adapter"), out, "--force"});
    EXPECT_EQ(result.exit_code, 1) << out;
    EXPECT_NE(result.err.find(std::string("the output would overwrite ") + what), std::string::npos) << result.err;
  }
  EXPECT_EQ(read_file(path("base/model.safetensors")), base);
  EXPECT_EQ(read_file(path("adapter/adapter_model.safetensors")), adapter);
}

TEST_F(MergeCommand, ABaseTheLoaderWouldRefuseIsRefusedBeforeAnythingIsWritten) {
  auto tensors = io::read_tensor_file(path("base/model.safetensors"));
  tensors.erase("model.layers.0.self_attn.k_proj.weight");
  io::write_tensor_file(path("base/model.safetensors"), tensors);
  const auto result = merge({path("base"), path("adapter"), path("out")});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.err.find("missing tensor 'model.layers.0.self_attn.k_proj.weight'"), std::string::npos) << result.err;
  EXPECT_FALSE(fs::exists(path("out")));
}

TEST_F(MergeCommand, MismatchedAdapterIsNamedAndLeavesNothing) {
  nn::ModelOptions options;
  options.lora = {.r = 4, .alpha = 8};
  options.target_modules = {"q_proj"};
  write_tiny_hf_model(path("wide"), {.hidden = 96, .intermediate = 128, .kv_hidden = 48});
  auto other = nn::load_hf_model(path("wide"), options);
  nn::save_peft_adapter(other, path("wide_adapter"), path("wide"));
  const auto result = merge({path("base"), path("wide_adapter"), path("out")});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.err.find("q_proj.lora_A.weight' has shape [4, 96], the module needs [4, 64]"), std::string::npos)
      << result.err;
  EXPECT_FALSE(fs::exists(path("out")));
  // An adapter key for a layer the base does not have.
  write_tiny_hf_model(path("deep"), {.layers = 3});
  auto deep = nn::load_hf_model(path("deep"), options);
  nn::save_peft_adapter(deep, path("deep_adapter"), path("deep"));
  const auto stray = merge({path("base"), path("deep_adapter"), path("out")});
  EXPECT_EQ(stray.exit_code, 1);
  EXPECT_NE(stray.err.find("model.layers.2.self_attn.q_proj.lora_A.weight' matches no weight"), std::string::npos) << stray.err;
  EXPECT_FALSE(fs::exists(path("out")));
}
