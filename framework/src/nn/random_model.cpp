#include "shardlora/nn/random_model.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "shardlora/data/byte_level.h"
#include "shardlora/io/durable_file.h"
#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/io/safetensors.h"
#include "shardlora/kernels/check.h"
#include "shardlora/nn/llama_config.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::nn {
namespace {

const char* const kSpecialTokens[] = {"<s>", "</s>", "<pad>"};

void write_json(const std::string& path, const nlohmann::json& json) { io::write_file_atomically(path, json.dump(2) + "\n"); }

void write_byte_tokenizer(const std::string& dir, int64_t max_positions) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int byte = 0; byte < kByteVocab; ++byte) vocab[data::byte_level_char(static_cast<uint8_t>(byte))] = byte;
  nlohmann::json added = nlohmann::json::array();
  for (int i = 0; i < 3; ++i) {
    added.push_back({{"id", kByteVocab + i}, {"content", kSpecialTokens[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  const nlohmann::json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
  write_json(dir + "/tokenizer.json",
             {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
              {"normalizer", nullptr}, {"pre_tokenizer", byte_level}, {"post_processor", nullptr}, {"decoder", byte_level},
              {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                         {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", vocab},
                         {"merges", nlohmann::json::array()}}}});
  write_json(dir + "/tokenizer_config.json",
             {{"tokenizer_class", "PreTrainedTokenizerFast"}, {"bos_token", "<s>"}, {"eos_token", "</s>"},
              {"pad_token", "<pad>"}, {"model_max_length", max_positions}, {"clean_up_tokenization_spaces", false}});
}

std::string join(const std::vector<std::string>& names, const char* separator) {
  std::string joined;
  for (const std::string& name : names) joined += (joined.empty() ? "" : separator) + name;
  return joined;
}

}  // namespace

const std::vector<std::string>& model_preset_names() {
  static const std::vector<std::string> names = {"tiny", "demo", "small", "qwen3-tiny", "qwen3-0.6b", "phi3-tiny", "gemma3-tiny"};
  return names;
}

RandomModelSpec model_preset(const std::string& name) {
  if (name == "tiny") return {};
  // A wider lm_head: through the final norm, logits reach about hidden * lm_head_std, and
  // with 0.02 the frozen head could not express a confident answer (loss floor ~3).
  if (name == "demo") return {.hidden = 128, .intermediate = 384, .layers = 4, .heads = 4, .kv_heads = 2, .lm_head_std = 0.1};
  if (name == "small") return {.hidden = 768, .intermediate = 3072, .layers = 12, .heads = 12, .kv_heads = 4};
  if (name == "qwen3-tiny") {
    return {.hidden = 64, .intermediate = 128, .layers = 2, .heads = 4, .kv_heads = 2, .model_type = "qwen3", .head_dim = 24,
            .tie_embeddings = true};
  }
  if (name == "qwen3-0.6b") {  // Qwen/Qwen3-0.6B's config.json
    return {.vocab = 151936, .hidden = 1024, .intermediate = 3072, .layers = 28, .heads = 16, .kv_heads = 8,
            .max_positions = 40960, .model_type = "qwen3", .head_dim = 128, .tie_embeddings = true};
  }
  if (name == "gemma3-tiny") {  // four norms a layer, GELU, local / global layers, tied embeddings
    return {.hidden = 64, .intermediate = 128, .layers = 6, .heads = 4, .kv_heads = 2, .model_type = "gemma3_text", .head_dim = 32,
            .tie_embeddings = true};
  }
  if (name == "phi3-tiny") {  // fused qkv / gate_up, Phi-4-mini's partial rotary
    return {.hidden = 64, .intermediate = 128, .layers = 2, .heads = 4, .kv_heads = 2, .model_type = "phi3", .partial_rotary_factor = 0.75};
  }
  throw Error("unknown model preset '" + name + "' (" + join(model_preset_names(), ", ") + ")");
}

std::map<std::string, torch::Tensor> write_random_hf_model(const std::string& dir, const RandomModelSpec& spec) {
  SHARDLORA_CHECK((spec.head_dim > 0 || spec.hidden % spec.heads == 0) && spec.heads % spec.kv_heads == 0, "random model: heads ",
                  spec.heads, " must divide hidden ", spec.hidden, " (or head_dim be given) and be a multiple of kv_heads ",
                  spec.kv_heads);
  SHARDLORA_CHECK(spec.model_type == "llama" || spec.model_type == "qwen3" || spec.model_type == "phi3" || spec.model_type == "gemma3_text",
                  "random model: model_type '", spec.model_type, "' (llama, qwen3, phi3, gemma3_text)");
  SHARDLORA_CHECK(!spec.tokenizer || spec.vocab >= kByteVocab + 3, "random model: a byte-level tokenizer needs a vocabulary of at least ",
                  kByteVocab + 3, " tokens, not ", spec.vocab);
  io::create_directories(dir);
  const bool qwen3 = spec.model_type == "qwen3", phi3 = spec.model_type == "phi3", gemma3 = spec.model_type == "gemma3_text";
  const int64_t bos = kByteVocab, eos = kByteVocab + 1, pad = kByteVocab + 2;
  nlohmann::json config_json = {
      {"architectures", {qwen3 ? "Qwen3ForCausalLM" : phi3 ? "Phi3ForCausalLM" : gemma3 ? "Gemma3ForCausalLM" : "LlamaForCausalLM"}},
      {"model_type", spec.model_type},
      {"hidden_size", spec.hidden}, {"intermediate_size", spec.intermediate}, {"num_hidden_layers", spec.layers},
      {"num_attention_heads", spec.heads}, {"num_key_value_heads", spec.kv_heads},
      {"head_dim", spec.head_dim > 0 ? spec.head_dim : spec.hidden / spec.heads}, {"vocab_size", spec.vocab},
      {"max_position_embeddings", spec.max_positions}, {"rms_norm_eps", qwen3 ? 1e-6 : 1e-5},
      {"rope_theta", qwen3 ? 1000000.0 : 10000.0}, {"hidden_act", "silu"}, {"tie_word_embeddings", spec.tie_embeddings},
      {"initializer_range", 0.02}, {"bos_token_id", bos}, {"eos_token_id", eos}, {"pad_token_id", pad},
      {"torch_dtype", torch_dtype_name(spec.dtype)}};
  if (!phi3) config_json["attention_bias"] = false;
  if (qwen3) config_json.update({{"use_sliding_window", false}, {"sliding_window", nullptr}, {"max_window_layers", spec.layers}});
  if (gemma3) {  // Gemma 3's pattern: 5 local layers (window 512 at this size) to 1 global
    config_json.erase("hidden_act");
    config_json.update({{"hidden_activation", "gelu_pytorch_tanh"}, {"query_pre_attn_scalar", config_json["head_dim"]},
                        {"sliding_window", 512}, {"sliding_window_pattern", 6}, {"rope_local_base_freq", 10000.0},
                        {"final_logit_softcapping", nullptr}, {"attn_logit_softcapping", nullptr}});
  }
  if (phi3) {
    config_json.update({{"partial_rotary_factor", spec.partial_rotary_factor}, {"original_max_position_embeddings", spec.max_positions},
                        {"sliding_window", nullptr}, {"resid_pdrop", 0.0}, {"embd_pdrop", 0.0}, {"attention_dropout", 0.0}});
  }
  const LlamaConfig config = parse_llama_config(config_json, dir + "/" + io::kConfigFile);

  torch::manual_seed(spec.seed);
  // HF's initializer_range: N(0, 0.02).
  const auto normal = [&](std::vector<int64_t> shape, double std = 0.02) { return (torch::randn(shape) * std).to(spec.dtype); };
  // Norms start as the identity: weight 1, or 0 for Gemma's, which scale by 1 + weight.
  const auto norm = [&](int64_t size) { return (gemma3 ? torch::zeros({size}) : torch::ones({size})).to(spec.dtype); };
  std::map<std::string, torch::Tensor> tensors;
  tensors["model.embed_tokens.weight"] = normal({spec.vocab, spec.hidden});
  for (int64_t layer = 0; layer < spec.layers; ++layer) {
    const std::string prefix = "model.layers." + std::to_string(layer) + ".";
    tensors[prefix + "input_layernorm.weight"] = norm(spec.hidden);
    tensors[prefix + "post_attention_layernorm.weight"] = norm(spec.hidden);
    for (const DecoderLinear& linear : decoder_linears(config)) tensors[prefix + linear.name + ".weight"] = normal({linear.out, linear.in});
    if (config.qk_norm) {
      tensors[prefix + "self_attn.q_norm.weight"] = norm(config.head_dim);
      tensors[prefix + "self_attn.k_norm.weight"] = norm(config.head_dim);
    }
    if (gemma3) {
      tensors[prefix + "pre_feedforward_layernorm.weight"] = norm(spec.hidden);
      tensors[prefix + "post_feedforward_layernorm.weight"] = norm(spec.hidden);
    }
  }
  tensors["model.norm.weight"] = norm(spec.hidden);
  if (!spec.tie_embeddings) tensors["lm_head.weight"] = normal({spec.vocab, spec.hidden}, spec.lm_head_std);

  // Sharded: layer 0 and the embeddings in the first file, the rest in the second.
  std::map<std::string, std::vector<std::string>> shards;
  for (const auto& [name, tensor] : tensors) {
    const bool first = name.rfind("model.layers.0.", 0) == 0 || name == "model.embed_tokens.weight";
    shards[!spec.sharded ? io::kSingleShard : first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors"]
        .push_back(name);
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
  if (spec.sharded) write_json(dir + "/" + io::kShardIndex, {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
  write_json(dir + "/" + io::kConfigFile, config_json);
  write_json(dir + "/generation_config.json", {{"bos_token_id", bos}, {"eos_token_id", eos}, {"pad_token_id", pad}});
  if (spec.tokenizer) write_byte_tokenizer(dir, spec.max_positions);
  return tensors;
}

}  // namespace shardlora::nn
