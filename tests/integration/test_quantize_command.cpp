// `shardlora quantize` end to end on tiny HF model directories the test writes: the output
// layout transformers loads, fidelity of the reloaded weights, sharded checkpoints, and
// bad input that must fail with a message naming the file or key and leave no output.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/io/safetensors.h"
#include "shardlora/io/tensor_file.h"
#include "shardlora/quant/checkpoint_quantizer.h"
#include "shardlora/quant/quant_state.h"
#include "shardlora/tensor/dtypes.h"
#include "shardlora_paths.h"
#include "subprocess.h"
#include "temp_dir.h"
#include "tiny_hf_model.h"

using namespace shardlora;
using namespace shardlora::testing;
namespace fs = std::filesystem;

namespace {

class QuantizeCommand : public TempDirTest {
 protected:
  ProcessResult quantize(std::vector<std::string> args) {
    args.insert(args.begin(), {shardlora_binary(), "quantize"});
    return run_process(args, 120.0);
  }
};

torch::Tensor tensor_of(const io::SafetensorsFile& file, const std::string& name) {
  const auto& info = file.info(name);
  return torch::from_blob(const_cast<uint8_t*>(file.data(info)), info.shape,
                          *scalar_type_from_safetensors(info.dtype)).clone();
}

quant::TensorLookup lookup_in(const io::SafetensorsFile& file) {
  return [&file](const std::string& name) -> std::optional<torch::Tensor> {
    if (!file.header().find(name)) return std::nullopt;
    return tensor_of(file, name);
  };
}

}  // namespace

TEST_F(QuantizeCommand, WritesTheBitsandbytesLayoutAndReloadsWithinTheErrorBound) {
  const auto original = write_tiny_hf_model(path("in"));
  const auto result = quantize({path("in"), path("out")});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("quantized 14 Linear weights"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("bits/parameter"), std::string::npos) << result.out;

  const io::SafetensorsFile out(path("out/model.safetensors"));
  size_t expected_keys = 0;
  for (const auto& [name, weight] : original) {
    if (!quant::is_decoder_linear_weight(name, weight.dim())) {
      const auto& info = out.info(name);
      EXPECT_EQ(info.dtype, "BF16") << name;
      EXPECT_EQ(info.shape, weight.sizes().vec()) << name;
      EXPECT_TRUE(torch::equal(tensor_of(out, name), weight.to(torch::kBFloat16))) << name;
      ++expected_keys;
      continue;
    }
    expected_keys += 6;
    const int64_t numel = weight.numel();
    EXPECT_EQ(out.info(name).dtype, "U8");
    EXPECT_EQ(out.info(name).shape, (std::vector<int64_t>{(numel + 1) / 2, 1})) << name;
    EXPECT_EQ(out.info(name + ".absmax").dtype, "U8");
    EXPECT_EQ(out.info(name + ".quant_map").shape, std::vector<int64_t>{16});
    EXPECT_EQ(out.info(name + ".nested_quant_map").shape, std::vector<int64_t>{256});
    const auto json_tensor = tensor_of(out, name + ".quant_state.bitsandbytes__nf4");
    const auto fields = nlohmann::json::parse(std::string(reinterpret_cast<const char*>(json_tensor.data_ptr<uint8_t>()),
                                                          json_tensor.numel()));
    EXPECT_EQ(fields["quant_type"], "nf4");
    EXPECT_EQ(fields["blocksize"], 64);
    EXPECT_EQ(fields["dtype"], "float32") << "the dtype of the weight that was quantized";
    EXPECT_EQ(fields["shape"], nlohmann::json(weight.sizes().vec()));
    EXPECT_EQ(fields["nested_blocksize"], 256);
    EXPECT_EQ(fields["nested_dtype"], "float32");

    // Bit-identical to quantizing in process, and within the NF4 error budget.
    const quant::QuantState loaded = quant::from_bnb_tensors(name, lookup_in(out), out.path());
    const quant::QuantState direct = quant::quantize(weight, {});
    EXPECT_TRUE(torch::equal(loaded.codes, direct.codes)) << name;
    const torch::Tensor error = (quant::dequantize(loaded, torch::kFloat32) - weight).abs();
    EXPECT_LE(error.mean().item<double>() / weight.std().item<double>(), 0.0735 * 1.1) << name;
    // No element is further than half the widest NF4 gap (times its block's absmax) from its
    // value, plus the < 1% scale change of double quantization.
    const float* nf4 = kernels::quant_type_traits(kernels::QuantType::NF4).code;
    double widest_gap = 0;
    for (int q = 0; q < 15; ++q) widest_gap = std::max(widest_gap, static_cast<double>(nf4[q + 1] - nf4[q]));
    const torch::Tensor block_absmax = weight.reshape({-1, 64}).abs().amax(1, true);
    EXPECT_TRUE((error.reshape({-1, 64}) <= block_absmax * (0.5 * widest_gap * 1.01 + 0.01)).all().item<bool>()) << name;
  }
  EXPECT_EQ(out.header().tensors.size(), expected_keys) << "no extra or missing keys";

  const auto config = nlohmann::json::parse(read_file(path("out/config.json")));
  const auto& qc = config["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "bitsandbytes");
  EXPECT_EQ(qc["load_in_4bit"], true);
  EXPECT_EQ(qc["bnb_4bit_quant_type"], "nf4");
  EXPECT_EQ(qc["bnb_4bit_use_double_quant"], true);
  EXPECT_EQ(qc["bnb_4bit_compute_dtype"], "bfloat16");
  EXPECT_EQ(qc["bnb_4bit_quant_storage"], "uint8");
  EXPECT_EQ(config["torch_dtype"], "bfloat16");
  EXPECT_EQ(config["num_hidden_layers"], 2) << "the rest of the config is kept";
  EXPECT_EQ(read_file(path("out/tokenizer.json")), read_file(path("in/tokenizer.json"))) << "other files copied";
  for (const auto& entry : fs::directory_iterator(root_)) {
    EXPECT_EQ(entry.path().filename().string().find(".partial"), std::string::npos) << "staging left behind";
  }
}

TEST_F(QuantizeCommand, ShardedCheckpointKeepsItsShardsAndIndex) {
  write_tiny_hf_model(path("in"), {.dtype = torch::kBFloat16, .sharded = true});
  const auto result = quantize({path("in"), path("out"), "--type", "fp4", "--no-double-quant", "--blocksize", "128"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto index = nlohmann::json::parse(read_file(path("out/model.safetensors.index.json")));
  uint64_t total = 0;
  size_t keys = 0;
  for (const char* shard : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
    const io::SafetensorsFile file(path(std::string("out/") + shard));
    for (const auto& tensor : file.header().tensors) {
      EXPECT_EQ(index["weight_map"][tensor.name], shard) << tensor.name;
      total += tensor.bytes();
      ++keys;
    }
  }
  EXPECT_EQ(index["weight_map"].size(), keys);
  EXPECT_EQ(index["metadata"]["total_size"], total);
  const io::SafetensorsFile second(path("out/model-00002-of-00002.safetensors"));
  const std::string w = "model.layers.1.mlp.down_proj.weight";
  EXPECT_EQ(second.info(w + ".absmax").dtype, "F32") << "no double quantization: fp32 absmax";
  EXPECT_FALSE(second.header().find(w + ".nested_absmax"));
  EXPECT_TRUE(second.header().find(w + ".quant_state.bitsandbytes__fp4"));
  const auto state = quant::from_bnb_tensors(w, lookup_in(second), second.path());
  EXPECT_EQ(state.blocksize, 128);
  EXPECT_EQ(state.dtype, torch::kBFloat16);
}

TEST_F(QuantizeCommand, BadInputFailsNamingTheProblemAndWritesNothing) {
  write_tiny_hf_model(path("in"));
  struct Case {
    std::string name;
    std::function<void(const std::string& dir)> corrupt;
    std::string fragment;
  };
  const std::vector<Case> cases = {
      {"no config", [](const std::string& dir) { fs::remove(dir + "/config.json"); }, "config.json: missing"},
      {"config without the model's sizes (transformers' LlamaConfig defaults, which the weights contradict)",
       [](const std::string& dir) { std::ofstream(dir + "/config.json") << R"({"model_type": "llama"})"; },
       "tensor 'model.embed_tokens.weight' has shape [48, 64], the config implies [32000, 4096]"},
      {"a tensor missing",
       [](const std::string& dir) {
         auto tensors = io::read_tensor_file(dir + "/model.safetensors");
         tensors.erase("model.layers.1.mlp.up_proj.weight");
         io::write_tensor_file(dir + "/model.safetensors", tensors);
       },
       "missing tensor 'model.layers.1.mlp.up_proj.weight'"},
      {"a shape the config contradicts",
       [](const std::string& dir) {
         auto config = io::read_json_file(dir + "/config.json");
         config["intermediate_size"] = 96;
         std::ofstream(dir + "/config.json") << config.dump();
       },
       "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [128, 64], the config implies [96, 64]"},
      {"config not json", [](const std::string& dir) { std::ofstream(dir + "/config.json") << "{oops"; },
       "config.json: not valid JSON"},
      {"truncated weights", [](const std::string& dir) { fs::resize_file(dir + "/model.safetensors", 1000); },
       "model.safetensors: truncated"},
      {"no weights", [](const std::string& dir) { fs::remove(dir + "/model.safetensors"); }, "no model.safetensors"},
      {"already quantized",
       [](const std::string& dir) {
         auto config = io::read_json_file(dir + "/config.json");
         config["quantization_config"] = nlohmann::json::object();
         std::ofstream(dir + "/config.json") << config.dump();
       },
       "already has a quantization_config"},
  };
  for (const auto& c : cases) {
    fs::remove_all(path("case"));
    fs::copy(path("in"), path("case"));
    c.corrupt(path("case"));
    const auto result = quantize({path("case"), path("out")});
    EXPECT_EQ(result.exit_code, 1) << c.name;
    EXPECT_NE(result.err.find(c.fragment), std::string::npos) << c.name << ": " << result.err;
    EXPECT_FALSE(fs::exists(path("out"))) << c.name << ": output left behind";
  }
}

TEST_F(QuantizeCommand, NonFiniteWeightIsNamed) {
  auto tensors = write_tiny_hf_model(path("in"));
  // Rewrite the file with a NaN inside one Linear weight.
  tensors["model.layers.1.self_attn.o_proj.weight"][3][7] = std::nanf("");
  io::write_tensor_file(path("in/model.safetensors"), tensors);
  const auto result = quantize({path("in"), path("out")});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.err.find("tensor 'model.layers.1.self_attn.o_proj.weight': holds NaN or infinite values"), std::string::npos)
      << result.err;
}

TEST_F(QuantizeCommand, ExistingOutputIsReplacedOnlyWithForce) {
  write_tiny_hf_model(path("in"));
  fs::create_directories(path("out"));
  std::ofstream(path("out/keep.txt")) << "precious";
  auto result = quantize({path("in"), path("out")});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.err.find("already exists (pass --force"), std::string::npos) << result.err;
  EXPECT_EQ(read_file(path("out/keep.txt")), "precious");
  result = quantize({path("in"), path("out"), "--force"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_FALSE(fs::exists(path("out/keep.txt")));
  EXPECT_TRUE(fs::exists(path("out/model.safetensors")));
}

TEST_F(QuantizeCommand, AnOutputOverItsOwnInputIsRefusedEvenWithForce) {
  write_tiny_hf_model(path("in"));
  const std::string before = read_file(path("in/model.safetensors"));
  for (const std::string& out : {path("in"), path("in/"), path("in/nested"), path(".")}) {
    const auto result = quantize({path("in"), out, "--force"});
    EXPECT_EQ(result.exit_code, 1) << out;
    EXPECT_NE(result.err.find("the output would overwrite its input checkpoint"), std::string::npos) << result.err;
  }
  EXPECT_EQ(read_file(path("in/model.safetensors")), before);
  EXPECT_FALSE(fs::exists(path("in/nested")));
}

TEST_F(QuantizeCommand, UsageErrorsExit2) {
  EXPECT_EQ(quantize({}).exit_code, 2);
  EXPECT_EQ(quantize({path("in"), path("out"), "--type", "int4"}).exit_code, 2);
  EXPECT_EQ(quantize({path("in"), path("out"), "--blocksize", "48"}).exit_code, 2);
}
