// `shardlora generate`: the executable's tokens equal nn::generate run here on the same model
// (4-bit base by default, with and without an adapter, from ids or from text through the
// model's tokenizer), it stops at the model's end-of-sequence id, and bad input is an error
// with a non-zero exit; with an adapter that added tokens, it and `eval` take the adapter's
// tokenizer.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "shardlora/data/tokenizer.h"
#include "shardlora/data/utf8.h"
#include "shardlora/nn/generation.h"
#include "shardlora/nn/hf_loader.h"
#include "shardlora/nn/peft_adapter.h"
#include "shardlora/nn/random_model.h"
#include "shardlora/train/trainer.h"
#include "shardlora_paths.h"
#include "subprocess.h"
#include "temp_dir.h"
#include "tiny_hf_model.h"
#include "tiny_training_run.h"

using namespace shardlora;
using namespace shardlora::testing;

namespace {

const std::vector<int64_t> kPrompt = {5, 17, 3, 40, 22};

class GenerateCommand : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    write_tiny_hf_model(path("base"));
  }

  ProcessResult generate(std::vector<std::string> args) {
    args.insert(args.begin(), {shardlora_binary(), "generate", path("base"), "--prompt-ids", "5,17,3,40,22"});
    return run_process(args, 120.0);
  }

  // The model the command builds by default: NF4 double-quantized base, bf16 compute.
  nn::LlamaModel load(const std::optional<nn::PeftAdapter>& adapter = std::nullopt) {
    nn::ModelOptions options;
    if (adapter) {
      options.lora = adapter->lora;
      options.target_modules = adapter->target_modules;
    }
    nn::LlamaModel model = nn::load_hf_model(path("base"), options);
    if (adapter) nn::load_adapter_weights(model, *adapter, path("adapter"));
    return model;
  }
};

std::string ids_line(const std::vector<int64_t>& ids) {
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  return line + "\n";
}

}  // namespace

TEST_F(GenerateCommand, GreedyTokensEqualTheLibrary) {
  const auto result = generate({"--max-new-tokens", "12"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  auto model = load();
  EXPECT_EQ(result.out, ids_line(nn::generate(model, kPrompt, {.max_new_tokens = 12})));
  EXPECT_NE(result.err.find("generated 12 tokens"), std::string::npos) << result.err;
}

TEST_F(GenerateCommand, AdapterChangesTheContinuation) {
  write_random_adapter(path("base"), path("adapter"), 16, 0.5, 9);
  const auto with_adapter = generate({"--adapter", path("adapter"), "--max-new-tokens", "12"});
  const auto without = generate({"--max-new-tokens", "12"});
  ASSERT_EQ(with_adapter.exit_code, 0) << with_adapter.err;
  auto model = load(nn::read_peft_adapter(path("adapter")));
  EXPECT_EQ(with_adapter.out, ids_line(nn::generate(model, kPrompt, {.max_new_tokens = 12})));
  EXPECT_NE(with_adapter.out, without.out) << "the adapter did not change greedy decoding";
}

TEST_F(GenerateCommand, SamplingIsReproducibleFromTheSeed) {
  const std::vector<std::string> sampling = {"--temperature", "1.3", "--top-k", "20", "--top-p", "0.95", "--seed", "7"};
  const auto first = generate(sampling), second = generate(sampling);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(first.out, second.out);
  auto model = load();
  EXPECT_EQ(first.out, ids_line(nn::generate(model, kPrompt, {.temperature = 1.3, .top_k = 20, .top_p = 0.95, .seed = 7})));
}

TEST_F(GenerateCommand, StopsAtTheEndOfSequenceIdOfGenerationConfig) {
  const auto free_run = generate({"--max-new-tokens", "10", "--json"});
  ASSERT_EQ(free_run.exit_code, 0) << free_run.err;
  const auto ids = nlohmann::json::parse(free_run.out)["generated_ids"].get<std::vector<int64_t>>();
  ASSERT_EQ(ids.size(), 10u);
  std::ofstream(path("base/generation_config.json")) << nlohmann::json{{"eos_token_id", {999, ids[3]}}}.dump();

  const auto stopped = generate({"--max-new-tokens", "10", "--json"});
  ASSERT_EQ(stopped.exit_code, 0) << stopped.err;
  const auto result = nlohmann::json::parse(stopped.out);
  const auto first_eos = std::find(ids.begin(), ids.end(), ids[3]) - ids.begin();
  EXPECT_EQ(result["generated_ids"].get<std::vector<int64_t>>(), std::vector<int64_t>(ids.begin(), ids.begin() + first_eos + 1));
  EXPECT_EQ(result["stop_reason"], "eos");
  EXPECT_EQ(result["prompt_ids"].get<std::vector<int64_t>>(), kPrompt);

  const auto ignored = generate({"--max-new-tokens", "10", "--ignore-eos"});
  EXPECT_EQ(ignored.out, ids_line(ids));
}

TEST_F(GenerateCommand, TextPromptsGoThroughTheModelsTokenizer) {
  nn::write_random_hf_model(path("byte_model"), {});  // byte-level tokenizer: one byte, one token
  const auto result = run_process({shardlora_binary(), "generate", path("byte_model"), "--prompt", "Hi!", "--max-new-tokens",
                                   "6", "--ignore-eos", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto json = nlohmann::json::parse(result.out);
  EXPECT_EQ(json["prompt_ids"].get<std::vector<int64_t>>(), (std::vector<int64_t>{'H', 'i', '!'}));
  nn::ModelOptions options;
  auto model = nn::load_hf_model(path("byte_model"), options);
  const auto expected = nn::generate(model, {'H', 'i', '!'}, {.max_new_tokens = 6});
  EXPECT_EQ(json["generated_ids"].get<std::vector<int64_t>>(), expected);
  const auto tokenizer = data::load_tokenizer(path("byte_model"));
  const std::string text = tokenizer->decode(expected, /*skip_special=*/true);
  if (data::is_valid_utf8(text)) EXPECT_EQ(json["text"], text);
  const auto both = run_process({shardlora_binary(), "generate", path("byte_model"), "--prompt", "x", "--prompt-ids", "1"});
  EXPECT_EQ(both.exit_code, 2);
}

TEST_F(GenerateCommand, BadInputIsAnErrorNamingIt) {
  const auto out_of_vocabulary = run_process({shardlora_binary(), "generate", path("base"), "--prompt-ids", "1,48"});
  EXPECT_EQ(out_of_vocabulary.exit_code, 1);
  EXPECT_NE(out_of_vocabulary.err.find("prompt token id 48 is outside the vocabulary [0, 48)"), std::string::npos)
      << out_of_vocabulary.err;
  const auto not_an_id = run_process({shardlora_binary(), "generate", path("base"), "--prompt-ids", "1,-2"});
  EXPECT_EQ(not_an_id.exit_code, 1);
  EXPECT_NE(not_an_id.err.find("'-2' is not a token id"), std::string::npos) << not_an_id.err;

  const auto eos_outside = generate({"--eos-id", "48"});
  EXPECT_EQ(eos_outside.exit_code, 1);
  EXPECT_NE(eos_outside.err.find("--eos-id 48 is outside the model's vocabulary [0, 48)"), std::string::npos) << eos_outside.err;
  const auto nan_temperature = generate({"--temperature", "nan"});
  EXPECT_EQ(nan_temperature.exit_code, 1);
  EXPECT_NE(nan_temperature.err.find("generate: temperature must be a finite number >= 0, not nan"), std::string::npos)
      << nan_temperature.err;
  // Refused before the KV cache is sized for it.
  std::string long_prompt = "1";
  for (int i = 0; i < 5000; ++i) long_prompt += ",1";
  const auto too_long = run_process({shardlora_binary(), "generate", path("base"), "--prompt-ids", long_prompt});
  EXPECT_EQ(too_long.exit_code, 1);
  EXPECT_NE(too_long.err.find("the prompt is 5001 tokens, the model's max_position_embeddings is"), std::string::npos) << too_long.err;
  std::ofstream(path("base/generation_config.json")) << R"({"eos_token_id": "two"})";
  const auto bad_config = generate({});
  EXPECT_EQ(bad_config.exit_code, 1);
  EXPECT_NE(bad_config.err.find("generation_config.json: key 'eos_token_id' must hold token ids"), std::string::npos)
      << bad_config.err;

  std::filesystem::create_directories(path("not_an_adapter"));
  const auto no_adapter = generate({"--adapter", path("not_an_adapter")});
  EXPECT_EQ(no_adapter.exit_code, 1);
  EXPECT_NE(no_adapter.err.find("adapter_config.json: missing"), std::string::npos) << no_adapter.err;

  const auto missing_prompt = run_process({shardlora_binary(), "generate", path("base")});
  EXPECT_EQ(missing_prompt.exit_code, 2);
  EXPECT_NE(missing_prompt.err.find("Exactly 1 option from [--prompt-ids,--prompt] is required"), std::string::npos)
      << missing_prompt.err;
  // The fixture's tokenizer.json is a stub without a vocabulary: named, not a crash.
  const auto stub_tokenizer = run_process({shardlora_binary(), "generate", path("base"), "--prompt", "hello"});
  EXPECT_EQ(stub_tokenizer.exit_code, 1);
  EXPECT_NE(stub_tokenizer.err.find("tokenizer.json: model has no 'vocab'"), std::string::npos) << stub_tokenizer.err;
}

namespace {

// An adapter with new tokens (data.add_special_tokens), as training writes it: `generate` and
// `eval` read the adapter's tokenizer and grow the model to its rows.
class NewTokenAdapter : public TinyTrainingRun {
 protected:
  void SetUp() override {
    TinyTrainingRun::SetUp();
    std::ofstream data(path("tokens.jsonl"));
    for (int i = 0; i < 24; ++i) data << R"({"text": "<|cat|> sat on the <|mat|> )" << i % 5 << R"("})" << "\n";
  }
};

}  // namespace

TEST_F(NewTokenAdapter, GenerateAndEvalReadTheAdaptersTokenizerAndRows) {
  train::Trainer(recipe("run", {"data.add_special_tokens=[<|cat|>, <|mat|>]", "data.train=" + path("tokens.jsonl")}))
      .run(train::StartMode::Fresh);
  const std::string adapter_dir = path("run/adapter");

  const auto generated = run_process({shardlora_binary(), "generate", path("model"), "--adapter", adapter_dir, "--prompt",
                                      "<|cat|> sat", "--max-new-tokens", "6", "--ignore-eos", "--json"});
  ASSERT_EQ(generated.exit_code, 0) << generated.err;
  const auto json = nlohmann::json::parse(generated.out);
  const auto prompt = json["prompt_ids"].get<std::vector<int64_t>>();
  EXPECT_EQ(prompt, data::load_tokenizer(adapter_dir)->encode("<|cat|> sat"));
  EXPECT_EQ(prompt.front(), 259) << "one id for the new token: the adapter's tokenizer";
  const nn::PeftAdapter adapter = nn::read_peft_adapter(adapter_dir);
  nn::ModelOptions options;  // the command's defaults: NF4 base, bf16
  nn::set_adapter_options(adapter, options);
  nn::LlamaModel model = nn::load_hf_model(path("model"), options);
  nn::load_adapter_weights(model, adapter, adapter_dir);
  EXPECT_EQ(json["generated_ids"].get<std::vector<int64_t>>(), nn::generate(model, prompt, {.max_new_tokens = 6}));

  // Each line's two new tokens are one id each with the adapter's tokenizer, 7 bytes each
  // with the base model's.
  const auto eval = [&](const std::string& which) {
    const auto result = run_process({shardlora_binary(), "eval", path("run/recipe.yaml"), which, "--data", path("tokens.jsonl"), "--json"});
    EXPECT_EQ(result.exit_code, 0) << result.err;
    return nlohmann::json::parse(result.out);
  };
  const auto with_adapter = eval("--adapter=" + adapter_dir), base = eval("--base");
  EXPECT_TRUE(std::isfinite(with_adapter["loss"].get<double>()));
  EXPECT_EQ(base["tokens"].get<int64_t>() - with_adapter["tokens"].get<int64_t>(), 24 * 2 * 6);
}
