// Loading HF directories into the model: quantize-on-load equals loading the bnb 4-bit
// directory `shardlora quantize` writes (codes and logits identical), float bases, and
// checkpoints whose tensors disagree with the config.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "shardlora/io/tensor_file.h"
#include "shardlora/kernels/check.h"
#include "shardlora/nn/hf_loader.h"
#include "shardlora/quant/checkpoint_quantizer.h"
#include "temp_dir.h"
#include "tiny_hf_model.h"

using namespace shardlora;
namespace fs = std::filesystem;

namespace {

using HfLoading = shardlora::testing::TempDirTest;

nn::ModelOptions fp32_options() {
  nn::ModelOptions options;
  options.compute_dtype = torch::kFloat32;
  return options;
}

std::string load_error(const std::string& dir) {
  try {
    nn::load_hf_model(dir, fp32_options());
  } catch (const Error& error) {
    return error.what();
  }
  return "no error";
}

}  // namespace

TEST_F(HfLoading, QuantizeOnLoadEqualsLoadingThePrequantizedDirectory) {
  shardlora::testing::write_tiny_hf_model(path("float"), {.sharded = true});
  quant::quantize_checkpoint(path("float"), path("nf4"), {});
  auto on_load = nn::load_hf_model(path("float"), fp32_options());
  auto prequantized = nn::load_hf_model(path("nf4"), fp32_options());
  ASSERT_EQ(on_load->linears().size(), prequantized->linears().size());
  for (size_t i = 0; i < on_load->linears().size(); ++i) {
    auto& a = dynamic_cast<const nn::Linear4bit&>(on_load->linears()[i].second->base());
    auto& b = dynamic_cast<const nn::Linear4bit&>(prequantized->linears()[i].second->base());
    EXPECT_TRUE(torch::equal(a.state().codes, b.state().codes)) << on_load->linears()[i].first;
    EXPECT_TRUE(torch::equal(a.state().absmax, b.state().absmax)) << on_load->linears()[i].first;
  }
  // The pre-quantized directory stores norms and embeddings in bf16: feed the same to both.
  const torch::Tensor ids = torch::randint(48, {2, 11}, torch::kInt64);
  auto on_load_bf16 = nn::load_hf_model(path("float"), nn::ModelOptions{});
  auto prequantized_bf16 = nn::load_hf_model(path("nf4"), nn::ModelOptions{});
  EXPECT_TRUE(torch::equal(on_load_bf16->forward(ids), prequantized_bf16->forward(ids)));
}

// A float32 model used to keep views into the memory-mapped files: replacing or truncating
// them under a running job killed it with SIGBUS. Loaded tensors are copies now.
TEST_F(HfLoading, AFloatModelOutlivesItsFilesBeingTruncated) {
  shardlora::testing::write_tiny_hf_model(path("float"));
  nn::ModelOptions options = fp32_options();
  options.quantize_base = false;
  auto model = nn::load_hf_model(path("float"), options);
  const torch::Tensor ids = torch::randint(48, {1, 9}, torch::kInt64);
  torch::NoGradGuard no_grad;
  const torch::Tensor before = model->forward(ids);
  fs::resize_file(path("float/model.safetensors"), 16);
  EXPECT_TRUE(torch::equal(model->forward(ids), before));
}

TEST_F(HfLoading, NonFiniteValuesInAnyFloatTensorAreRefusedNamingIt) {
  for (const std::string name : {"model.norm.weight", "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight"}) {
    auto tensors = shardlora::testing::write_tiny_hf_model(path("nan"));
    tensors[name].view(-1)[3] = name == "model.norm.weight" ? INFINITY : NAN;
    io::write_tensor_file(path("nan/model.safetensors"), tensors);
    EXPECT_NE(load_error(path("nan")).find("tensor '" + name + "' holds NaN or infinite values"), std::string::npos)
        << load_error(path("nan"));
  }
}

TEST_F(HfLoading, FloatBaseKeepsDenseWeights) {
  const auto tensors = shardlora::testing::write_tiny_hf_model(path("float"));
  nn::ModelOptions options = fp32_options();
  options.quantize_base = false;
  auto model = nn::load_hf_model(path("float"), options);
  const auto& [name, linear] = model->linears().front();
  EXPECT_EQ(dynamic_cast<const nn::DenseLinear*>(&linear->base()) != nullptr, true);
  EXPECT_TRUE(torch::equal(linear->base().dense_weight(torch::kFloat32), tensors.at(name + ".weight")));
}

TEST_F(HfLoading, InconsistentCheckpointsAreNamed) {
  auto tensors = shardlora::testing::write_tiny_hf_model(path("base"));
  const auto rewrite = [&](const std::string& dir, const std::map<std::string, torch::Tensor>& contents) {
    fs::copy(path("base"), dir, fs::copy_options::recursive);
    io::write_tensor_file(dir + "/model.safetensors", contents);
  };
  auto extra = tensors;
  extra["model.layers.0.mlp.extra_proj.weight"] = torch::zeros({2, 2});
  rewrite(path("extra"), extra);
  EXPECT_NE(load_error(path("extra")).find("does not use, e.g. 'model.layers.0.mlp.extra_proj.weight'"), std::string::npos)
      << load_error(path("extra"));
  auto missing = tensors;
  missing.erase("model.layers.1.self_attn.k_proj.weight");
  rewrite(path("missing"), missing);
  EXPECT_NE(load_error(path("missing")).find("missing tensor 'model.layers.1.self_attn.k_proj.weight'"), std::string::npos);
  auto wrong = tensors;
  wrong["model.embed_tokens.weight"] = torch::zeros({48, 63});
  rewrite(path("wrong"), wrong);
  EXPECT_NE(load_error(path("wrong")).find("'model.embed_tokens.weight' has shape [48, 63], the config implies [48, 64]"),
            std::string::npos);
  fs::copy(path("base"), path("badconfig"), fs::copy_options::recursive);
  std::ofstream(path("badconfig/config.json")) << R"({"model_type": "gpt2", "num_hidden_layers": 2})";
  EXPECT_NE(load_error(path("badconfig")).find("model_type 'gpt2' is not supported"), std::string::npos);
}
