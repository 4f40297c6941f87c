#include "tiny_hf_model.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "shardlora/io/safetensors.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::testing {

std::map<std::string, torch::Tensor> write_tiny_hf_model(const std::string& dir, const TinyModelOptions& options) {
  std::filesystem::create_directories(dir);
  torch::manual_seed(options.seed);
  const auto normal = [&](std::vector<int64_t> shape) { return (torch::randn(shape) * 0.02).to(options.dtype); };
  std::map<std::string, torch::Tensor> tensors;
  tensors["model.embed_tokens.weight"] = normal({options.vocab, options.hidden});
  for (int64_t layer = 0; layer < options.layers; ++layer) {
    const std::string prefix = "model.layers." + std::to_string(layer) + ".";
    tensors[prefix + "input_layernorm.weight"] = torch::ones({options.hidden}).to(options.dtype);
    tensors[prefix + "post_attention_layernorm.weight"] = torch::ones({options.hidden}).to(options.dtype);
    tensors[prefix + "self_attn.q_proj.weight"] = normal({options.hidden, options.hidden});
    tensors[prefix + "self_attn.k_proj.weight"] = normal({options.kv_hidden, options.hidden});
    tensors[prefix + "self_attn.v_proj.weight"] = normal({options.kv_hidden, options.hidden});
    tensors[prefix + "self_attn.o_proj.weight"] = normal({options.hidden, options.hidden});
    tensors[prefix + "mlp.gate_proj.weight"] = normal({options.intermediate, options.hidden});
    tensors[prefix + "mlp.up_proj.weight"] = normal({options.intermediate, options.hidden});
    tensors[prefix + "mlp.down_proj.weight"] = normal({options.hidden, options.intermediate});
  }
  tensors["model.norm.weight"] = torch::ones({options.hidden}).to(options.dtype);
  tensors["lm_head.weight"] = normal({options.vocab, options.hidden});

  // Shards: layer 0 and the embeddings in the first file, the rest in the second.
  std::map<std::string, std::vector<std::string>> shards;
  for (const auto& [name, tensor] : tensors) {
    const bool first = name.rfind("model.layers.0.", 0) == 0 || name == "model.embed_tokens.weight";
    const std::string file = !options.sharded ? "model.safetensors"
                             : first          ? "model-00001-of-00002.safetensors"
                                              : "model-00002-of-00002.safetensors";
    shards[file].push_back(name);
  }
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total = 0;
  for (const auto& [file, names] : shards) {
    std::vector<std::pair<std::string, size_t>> bound;
    for (const auto& name : names) bound.emplace_back(name, tensors[name].dim());
    io::SafetensorsWriter writer(dir + "/" + file, io::SafetensorsWriter::header_bound(bound));
    for (const auto& name : names) {
      const torch::Tensor& tensor = tensors[name];
      writer.add(name, safetensors_dtype_name(tensor.scalar_type()), tensor.sizes().vec(), tensor.data_ptr(), tensor.nbytes());
      weight_map[name] = file;
      total += tensor.nbytes();
    }
    writer.finish();
  }
  if (options.sharded) {
    std::ofstream(dir + "/model.safetensors.index.json")
        << nlohmann::json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(2);
  }
  const nlohmann::json config = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"hidden_size", options.hidden},
      {"intermediate_size", options.intermediate},
      {"num_hidden_layers", options.layers},
      {"num_attention_heads", 4},
      {"num_key_value_heads", 2},
      {"vocab_size", options.vocab},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", 10000.0},
      {"torch_dtype", torch_dtype_name(options.dtype)},
  };
  std::ofstream(dir + "/config.json") << config.dump(2);
  std::ofstream(dir + "/tokenizer.json") << R"({"version": "1.0", "model": {"type": "BPE"}})";
  return tensors;
}

}  // namespace shardlora::testing
