// `shardlora estimate` and train/memory_estimate.h: every recipe in recipes/ parses,
// validates and is estimated; Llama-3.1-8B reproduces the published shape (4-bit weights
// plus 16-bit embeddings and lm_head about 5.7 GB, a device floor near 6.4 GB, full
// fine-tuning 16 bytes per parameter); sharding divides the 4-bit base by the world size;
// for small models on the CPU the estimate lands within 15% of the measured peak RSS.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <nlohmann/json.hpp>

#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/nn/llama_config.h"
#include "shardlora/nn/random_model.h"
#include "shardlora/train/memory_estimate.h"
#include "shardlora_paths.h"
#include "subprocess.h"
#include "temp_dir.h"

using namespace shardlora;
using namespace shardlora::testing;
namespace fs = std::filesystem;

namespace {

// config.json of the published models (the fields the estimate reads).
nlohmann::json llama_config(int64_t hidden, int64_t intermediate, int64_t layers, int64_t heads, bool tied) {
  return {{"model_type", "llama"},         {"architectures", {"LlamaForCausalLM"}},
          {"vocab_size", 128256},          {"hidden_size", hidden},
          {"intermediate_size", intermediate}, {"num_hidden_layers", layers},
          {"num_attention_heads", heads},  {"num_key_value_heads", 8},
          {"max_position_embeddings", 131072}, {"rms_norm_eps", 1e-5},
          {"rope_theta", 500000.0},        {"tie_word_embeddings", tied},
          {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 8192}}}};
}

const std::map<std::string, nlohmann::json>& published_configs() {
  static const std::map<std::string, nlohmann::json> configs = {
      {"llama-3.2-1b", llama_config(2048, 8192, 16, 32, true)},
      {"llama-3.1-8b", llama_config(4096, 14336, 32, 32, false)},
      {"llama-3.1-70b", llama_config(8192, 28672, 80, 64, false)},
      // Qwen/Qwen3-8B's config.json.
      {"qwen3-8b",
       {{"model_type", "qwen3"}, {"architectures", {"Qwen3ForCausalLM"}}, {"vocab_size", 151936}, {"hidden_size", 4096},
        {"intermediate_size", 12288}, {"num_hidden_layers", 36}, {"num_attention_heads", 32}, {"num_key_value_heads", 8},
        {"head_dim", 128}, {"max_position_embeddings", 40960}, {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000},
        {"rope_scaling", nullptr}, {"attention_bias", false}, {"use_sliding_window", false}, {"sliding_window", nullptr},
        {"max_window_layers", 36}, {"tie_word_embeddings", false}}},
      // google/gemma-3-1b-it's config.json (Gemma3ForCausalLM).
      {"gemma-3-1b",
       {{"model_type", "gemma3_text"}, {"architectures", {"Gemma3ForCausalLM"}}, {"vocab_size", 262144}, {"hidden_size", 1152},
        {"intermediate_size", 6912}, {"num_hidden_layers", 26}, {"num_attention_heads", 4}, {"num_key_value_heads", 1},
        {"head_dim", 256}, {"max_position_embeddings", 32768}, {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0},
        {"rope_local_base_freq", 10000.0}, {"rope_scaling", nullptr}, {"sliding_window", 512}, {"sliding_window_pattern", 6},
        {"query_pre_attn_scalar", 256}, {"hidden_activation", "gelu_pytorch_tanh"}, {"final_logit_softcapping", nullptr},
        {"attn_logit_softcapping", nullptr}, {"attention_bias", false}, {"tie_word_embeddings", true}}},
      // google/gemma-3-12b-it's config.json (Gemma3ForConditionalGeneration: the text model in
      // text_config, transformers' defaults for the rest).
      {"gemma-3-12b",
       {{"model_type", "gemma3"}, {"architectures", {"Gemma3ForConditionalGeneration"}}, {"mm_tokens_per_image", 256},
        {"text_config", {{"model_type", "gemma3_text"}, {"hidden_size", 3840}, {"intermediate_size", 15360}, {"num_attention_heads", 16},
                         {"num_hidden_layers", 48}, {"num_key_value_heads", 8}, {"sliding_window", 1024},
                         {"rope_scaling", {{"factor", 8.0}, {"rope_type", "linear"}}}}},
        {"vision_config", {{"model_type", "siglip_vision_model"}, {"hidden_size", 1152}, {"num_hidden_layers", 27}}}}},
      // microsoft/phi-4's config.json.
      {"phi-4",
       {{"model_type", "phi3"}, {"architectures", {"Phi3ForCausalLM"}}, {"vocab_size", 100352}, {"hidden_size", 5120},
        {"intermediate_size", 17920}, {"num_hidden_layers", 40}, {"num_attention_heads", 40}, {"num_key_value_heads", 10},
        {"max_position_embeddings", 16384}, {"original_max_position_embeddings", 16384}, {"rms_norm_eps", 1e-5},
        {"rope_theta", 250000.0}, {"rope_scaling", nullptr}, {"partial_rotary_factor", 1.0}, {"sliding_window", nullptr},
        {"resid_pdrop", 0.0}, {"embd_pdrop", 0.0}, {"attention_dropout", 0.0}, {"tie_word_embeddings", false}}},
  };
  return configs;
}

const std::string kRecipes = std::string(SHARDLORA_SOURCE_DIR) + "/recipes";

class Estimate : public TempDirTest {
 protected:
  // A model directory holding only config.json, as estimate needs.
  std::string config_dir(const std::string& name) {
    fs::create_directories(path(name));
    std::ofstream(path(name + "/config.json")) << published_configs().at(name).dump(2);
    return path(name);
  }

  std::vector<train::MemoryEstimate> estimate(const std::string& recipe_file, const std::string& model, int64_t world,
                                              std::vector<std::string> overrides = {}) {
    overrides.insert(overrides.begin(), "model.path=" + model);
    const train::Recipe recipe = train::Recipe::load(kRecipes + "/" + recipe_file, overrides);
    return train::estimate_memory(recipe, nn::parse_llama_config(published_configs().at(fs::path(model).filename().string()), model),
                                  {world, true});
  }
};

double gb(int64_t bytes) { return static_cast<double>(bytes) / 1e9; }

}  // namespace

TEST_F(Estimate, EveryRecipeParsesValidatesAndEstimates) {
  size_t recipes = 0;
  for (const auto& entry : fs::directory_iterator(kRecipes)) {
    if (entry.path().extension() != ".yaml") continue;
    ++recipes;
    const std::string name = entry.path().filename().string();
    std::vector<std::string> args = {shardlora_binary(), "estimate", entry.path().string(), "--json"};
    if (name == "demo.yaml") {
      nn::RandomModelSpec spec = nn::model_preset("demo");
      nn::write_random_hf_model(path("demo-model"), spec);
      args.push_back("model.path=" + path("demo-model"));
      args.push_back("--cpu");
    } else {
      const std::string model = name.substr(0, name.size() - std::string("-qlora.yaml").size());
      args.push_back("model.path=" + config_dir(model));
      args.push_back("--world-size");
      args.push_back(model == "llama-3.1-70b" ? "16" : model == "llama-3.1-8b" ? "8" : "1");  // qwen3-8b, phi-4, gemma-3: one GPU
    }
    const auto result = run_process(args);
    ASSERT_EQ(result.exit_code, 0) << name << ": " << result.err;
    const auto table = nlohmann::json::parse(result.out);
    for (const char* method : {"full", "lora", "qlora"}) ASSERT_TRUE(table["methods"].contains(method)) << name;
    if (name != "demo.yaml") {
      EXPECT_TRUE(table["methods"]["qlora"]["fits"].get<bool>()) << name << " must fit its stated GPUs at 80 GiB";
      EXPECT_GT(table["methods"]["full"]["device_total_bytes"].get<int64_t>(), table["methods"]["qlora"]["device_total_bytes"].get<int64_t>());
    }
  }
  EXPECT_EQ(recipes, 8u) << "demo, llama-3.2-1b, llama-3.1-8b, llama-3.1-70b, qwen3-8b, phi-4, gemma-3-1b, gemma-3-12b";
}

TEST_F(Estimate, Llama31_8bHasThePublishedShape) {
  const auto methods = estimate("llama-3.1-8b-qlora.yaml", config_dir("llama-3.1-8b"), 1);
  const auto& full = methods[0];
  const auto& qlora = methods[2];
  const int64_t params = train::parameter_count(nn::parse_llama_config(published_configs().at("llama-3.1-8b"), "8b"));
  EXPECT_NEAR(static_cast<double>(params) / 1e9, 8.03, 0.01);
  // Full fine-tuning: bf16 weights and gradients, fp32 master weights and AdamW moments.
  const int64_t full_static = full.row("weights (bf16)", true) + full.row("gradients (bf16)", true) +
                              full.row("optimizer: fp32 master + AdamW", true);
  EXPECT_EQ(full_static, 16 * params);
  // QLoRA: 4-bit linear weights with double-quantized state, bf16 embeddings and lm_head.
  const int64_t weights = qlora.row("base weights (4-bit + quant state)", true) + qlora.row("embeddings, norms, lm_head", true);
  EXPECT_NEAR(gb(weights), 5.70, 0.05);
  const int64_t floor = qlora.device_total() - qlora.row("activations", true) - qlora.row("transient: a loss chunk", true);
  EXPECT_GT(gb(floor), 6.0);
  EXPECT_LT(gb(floor), 7.0);
  EXPECT_LT(qlora.device_total(), 24LL << 30) << "8B QLoRA fits a 24 GiB GPU with checkpointing";
}

TEST_F(Estimate, Qwen3_8bHasThePublishedShape) {
  const nn::LlamaConfig config = nn::parse_llama_config(published_configs().at("qwen3-8b"), "qwen3-8b");
  // The model card: 8.2B parameters, 6.95B of them outside the embeddings.
  const int64_t params = train::parameter_count(config);
  EXPECT_NEAR(static_cast<double>(params) / 1e9, 8.19, 0.01);
  EXPECT_NEAR(static_cast<double>(params - 2 * config.vocab_size * config.hidden_size) / 1e9, 6.95, 0.01);
  const auto qlora = estimate("qwen3-8b-qlora.yaml", config_dir("qwen3-8b"), 1)[2];
  EXPECT_LT(qlora.device_total(), 24LL << 30) << "Qwen3-8B QLoRA fits a 24 GiB GPU with checkpointing";
}

TEST_F(Estimate, Phi4HasThePublishedShape) {
  const nn::LlamaConfig config = nn::parse_llama_config(published_configs().at("phi-4"), "phi-4");
  ASSERT_TRUE(config.fused_projections);
  EXPECT_NEAR(static_cast<double>(train::parameter_count(config)) / 1e9, 14.66, 0.01) << "the model card's 14.7B";
  const auto lora = estimate("phi-4-qlora.yaml", config_dir("phi-4"), 1)[2];
  // LoRA r 16 on qkv_proj, o_proj, gate_up_proj and down_proj: r (in + out) each, 40 layers.
  const int64_t per_layer = 16 * ((5120 + 7680) + (5120 + 5120) + (5120 + 35840) + (17920 + 5120));
  EXPECT_EQ(lora.row("adapters (fp32)", true), 4 * 40 * per_layer);
  // DoRA adds a magnitude per output row of each adapted Linear, and keeps two more outputs
  // per token of each for backward.
  const auto dora = estimate("phi-4-qlora.yaml", config_dir("phi-4"), 1, {"lora.use_dora=true"})[2];
  const int64_t outputs = 7680 + 5120 + 35840 + 5120;
  EXPECT_EQ(dora.row("adapters (fp32)", true), 4 * 40 * (per_layer + outputs));
  EXPECT_EQ(dora.row("adapter gradients (fp32)", true), 4 * 40 * (per_layer + outputs));
  EXPECT_GT(dora.row("activations", true), lora.row("activations", true));
  // Two added tokens: their rows of embed_tokens and the untied lm_head train.
  const auto tokens = estimate("phi-4-qlora.yaml", config_dir("phi-4"), 1, {"data.add_special_tokens=[<a>, <b>]"})[2];
  EXPECT_EQ(tokens.row("adapters (fp32)", true), 4 * (40 * per_layer + 2 * 2 * 5120));
  // The rows take part where they stand: no row of [vocab, hidden] for them.
  const auto row_names = [](const train::MemoryEstimate& e) {
    std::vector<std::string> names;
    for (const auto& r : e.rows) names.push_back(r.name);
    return names;
  };
  EXPECT_EQ(row_names(tokens), row_names(lora));
  // Both matrices trained whole instead: the grown vocabulary's rows, no token rows, and
  // lm_head's copy in bf16 and the loss's fp32 gradient of it.
  const auto whole = estimate("phi-4-qlora.yaml", config_dir("phi-4"), 1,
                              {"data.add_special_tokens=[<a>, <b>]", "lora.modules_to_save=[embed_tokens, lm_head]"})[2];
  EXPECT_EQ(whole.row("adapters (fp32)", true), 4 * (40 * per_layer + 2 * (100352 + 2) * 5120));
  EXPECT_EQ(whole.row("lm_head trained whole: its copy, the loss's gradient", true), (100352LL + 2) * 5120 * (4 + 2));
  EXPECT_EQ(lora.row("embeddings, norms, lm_head", true) - whole.row("embeddings, norms, lm_head", true), 2 * 100352LL * 5120 * 2)
      << "no frozen copy beside a matrix trained whole";
  const auto embeddings = estimate("phi-4-qlora.yaml", config_dir("phi-4"), 1, {"lora.modules_to_save=[embed_tokens]"})[2];
  EXPECT_EQ(embeddings.row("lm_head trained whole: its copy, the loss's gradient", true), 0) << "phi-4's lm_head is untied";
}

TEST_F(Estimate, Gemma3_1bHasThePublishedShape) {
  const nn::LlamaConfig config = nn::parse_llama_config(published_configs().at("gemma-3-1b"), "gemma-3-1b");
  ASSERT_TRUE(config.gemma);
  EXPECT_EQ(std::count(config.windowed_layers.begin(), config.windowed_layers.end(), false), 4) << "layers 5, 11, 17, 23 global";
  EXPECT_NEAR(static_cast<double>(train::parameter_count(config)) / 1e9, 1.00, 0.005) << "the model card's 1B";
}

TEST_F(Estimate, Gemma3_12bLanguageModelHasThePublishedShape) {
  const nn::LlamaConfig config = nn::parse_llama_config(published_configs().at("gemma-3-12b"), "gemma-3-12b");
  ASSERT_TRUE(config.multimodal && config.gemma && config.tie_word_embeddings);
  ASSERT_TRUE(config.rope_scaling) << "linear x8 on the global layers";
  EXPECT_EQ(config.sliding_window, 1024);
  EXPECT_EQ(std::count(config.windowed_layers.begin(), config.windowed_layers.end(), false), 8) << "every sixth of 48 layers global";
  // The Gemma 3 report: 1,012M embedding and 10,759M other language-model parameters (the
  // 417M of the vision encoder are not trained and not counted).
  const int64_t params = train::parameter_count(config);
  EXPECT_NEAR(static_cast<double>(config.vocab_size * config.hidden_size) / 1e6, 1006.9, 0.1);
  EXPECT_NEAR(static_cast<double>(params - config.vocab_size * config.hidden_size) / 1e6, 10759, 5);
  const auto qlora = estimate("gemma-3-12b-qlora.yaml", config_dir("gemma-3-12b"), 1)[2];
  EXPECT_LT(qlora.device_total(), 24LL << 30) << "Gemma-3-12B QLoRA fits a 24 GiB GPU with checkpointing";
}

TEST_F(Estimate, ShardingDividesTheBaseByTheWorldSize) {
  const std::string model = config_dir("llama-3.1-70b");
  const auto one = estimate("llama-3.1-70b-qlora.yaml", model, 1)[2];
  const auto sixteen = estimate("llama-3.1-70b-qlora.yaml", model, 16)[2];
  const int64_t base = one.row("base weights (4-bit + quant state)", true);
  EXPECT_NEAR(static_cast<double>(sixteen.row("base weights (4-bit + quant state)", true)), base / 16.0, 1.0);
  EXPECT_GT(sixteen.row("all-gather buffer (2 layers)", true), 0);
  EXPECT_GT(sixteen.row("gradient buckets", true), 0);
  EXPECT_GT(gb(base), 35.0) << "70B in 4 bits is about 35 GB of linear weights";
}

TEST_F(Estimate, LandsWithinFifteenPercentOfMeasuredPeakRss) {
  // The estimate counts attention for documents as long as a row (the worst case), so the
  // data here fills each row with one document: answers longer than any max_seq_len, cut.
  fs::create_directories(path("data"));
  {
    std::ofstream data(path("data/train.jsonl"));
    std::mt19937 rng(5);
    for (int record = 0; record < 16; ++record) {
      std::string answer(2100, 'a');
      for (char& letter : answer) letter = static_cast<char>('a' + rng() % 26);
      data << R"({"messages":[{"role":"user","content":"go"},{"role":"assistant","content":")" << answer << "\"}]}\n";
    }
  }
  nn::RandomModelSpec demo = nn::model_preset("demo");
  demo.dtype = torch::kFloat32;
  nn::write_random_hf_model(path("demo-model"), demo);
  nn::write_random_hf_model(path("tiny-model"), nn::model_preset("tiny"));
  // Llama 3's vocabulary at seq 2048 on one narrow layer: the loss's memory dominates.
  nn::RandomModelSpec wide_vocab{.vocab = 128256, .hidden = 256, .intermediate = 512, .layers = 1, .heads = 4, .kv_heads = 2};
  wide_vocab.dtype = torch::kFloat32;
  nn::write_random_hf_model(path("vocab-128k-model"), wide_vocab);
  nn::RandomModelSpec qwen3 = nn::model_preset("qwen3-tiny");
  qwen3.dtype = torch::kFloat32;
  nn::write_random_hf_model(path("qwen3-model"), qwen3);
  nn::RandomModelSpec phi3 = nn::model_preset("phi3-tiny");
  phi3.dtype = torch::kFloat32;
  nn::write_random_hf_model(path("phi3-model"), phi3);
  nn::RandomModelSpec gemma3 = nn::model_preset("gemma3-tiny");
  gemma3.dtype = torch::kFloat32;
  nn::write_random_hf_model(path("gemma3-model"), gemma3);
  const std::vector<std::vector<std::string>> cases = {
      {"model.path=" + path("demo-model")},
      {"model.path=" + path("tiny-model"), "model.dtype=bf16", "training.activation_checkpointing=true", "data.max_seq_len=256"},
      {"model.path=" + path("vocab-128k-model"), "data.max_seq_len=2048", "training.micro_batch_size=1"},
      // New tokens' rows take part where they stand: no [vocab, hidden] copy or gradient.
      {"model.path=" + path("vocab-128k-model"), "data.max_seq_len=2048", "training.micro_batch_size=1",
       "data.add_special_tokens=[<|x|>, <|y|>]"},
      {"model.path=" + path("qwen3-model"), "data.max_seq_len=256"},
      {"model.path=" + path("phi3-model"), "data.max_seq_len=512"},
      {"model.path=" + path("gemma3-model"), "data.max_seq_len=256"},
  };
  int run = 0;
  for (const auto& overrides : cases) {
    std::vector<std::string> common = overrides;
    for (const std::string& o : {"data.train=" + path("data/train.jsonl"), std::string("data.val=\"\""), std::string("training.max_steps=2"),
                                 std::string("schedule.warmup_steps=0"), std::string("training.eval_every=0"),
                                 std::string("training.log_every=1")}) {
      common.push_back(o);
    }
    std::vector<std::string> train = {shardlora_binary(), "train", kRecipes + "/demo.yaml", "output.dir=" + path("run" + std::to_string(run++))};
    train.insert(train.end(), common.begin(), common.end());
    const auto trained = run_process(train, 300.0);
    ASSERT_EQ(trained.exit_code, 0) << trained.err;
    double measured_mib = 0;
    std::ifstream metrics(path("run" + std::to_string(run - 1) + "/metrics.jsonl"));
    for (std::string line; std::getline(metrics, line);) measured_mib = std::max(measured_mib, nlohmann::json::parse(line)["peak_rss_mib"].get<double>());

    std::vector<std::string> estimate = {shardlora_binary(), "estimate", kRecipes + "/demo.yaml", "--cpu", "--json"};
    estimate.insert(estimate.end(), common.begin(), common.end());
    const auto estimated = run_process(estimate);
    ASSERT_EQ(estimated.exit_code, 0) << estimated.err;
    const double estimate_mib =
        nlohmann::json::parse(estimated.out)["methods"]["qlora"]["host_total_bytes"].get<double>() / (1 << 20);
    std::string label;
    for (const std::string& o : overrides) label += (label.empty() ? "" : " ") + o;
    std::printf("%s: estimated %.1f MiB, measured peak RSS %.1f MiB, ratio %.3f\n", label.c_str(), estimate_mib, measured_mib,
                estimate_mib / measured_mib);
    EXPECT_NEAR(estimate_mib / measured_mib, 1.0, 0.15) << label << ": estimated " << estimate_mib << " MiB, measured " << measured_mib
                                                         << " MiB";
  }
}

TEST_F(Estimate, BadArgumentsAreNamed) {
  const auto size = run_process({shardlora_binary(), "estimate", kRecipes + "/llama-3.1-8b-qlora.yaml",
                                 "model.path=" + config_dir("llama-3.1-8b"), "--gpu-mem", "lots"});
  EXPECT_EQ(size.exit_code, 1);
  EXPECT_NE(size.err.find("--gpu-mem: 'lots' is not a size"), std::string::npos) << size.err;
  const auto missing = run_process({shardlora_binary(), "estimate", kRecipes + "/llama-3.1-8b-qlora.yaml"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("llama-3.1-8b-qlora.yaml:6: key 'model.path': 'models/llama-3.1-8b' does not exist"), std::string::npos)
      << missing.err;
}
