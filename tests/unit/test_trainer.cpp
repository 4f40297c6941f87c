// The trainer on a tiny random model and a text dataset: the loss (and the held-out loss)
// falls; a run stopped at a
// checkpoint and resumed produces the uninterrupted run's losses and adapter bit for bit
// (LoRA dropout and activation checkpointing on, so RNG and data position must be
// restored); old checkpoints beyond keep_last are removed.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "shardlora/io/tensor_file.h"
#include "shardlora/kernels/check.h"
#include "shardlora/data/tokenizer.h"
#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/nn/hf_loader.h"
#include "shardlora/nn/merge.h"
#include "shardlora/nn/peft_adapter.h"
#include "shardlora/train/trainer.h"
#include "tiny_training_run.h"

using namespace shardlora;
using namespace shardlora::train;
namespace fs = std::filesystem;

namespace {

class TrainerRuns : public shardlora::testing::TinyTrainingRun {
 protected:
  // The adapter of `trained` (in adapter_dir) loads back into the 4-bit base as trained to the
  // same logits bit for bit, and merges into a float model (vocab_size, tokenizer) computing
  // base + adapter within fp32 rounding.
  void expect_loads_back_and_merges(Trainer& trained, const std::string& adapter_dir, int64_t vocab) {
    const nn::PeftAdapter adapter = nn::read_peft_adapter(adapter_dir);
    const auto load_back = [&](bool quantized) {
      nn::ModelOptions options;
      options.compute_dtype = torch::kFloat32;
      options.quantize_base = quantized;
      nn::set_adapter_options(adapter, options);
      nn::LlamaModel model = nn::load_hf_model(path("model"), options);
      nn::load_adapter_weights(model, adapter, adapter_dir);
      model->eval();
      return model;
    };
    const torch::Tensor ids = torch::tensor({{259, 5, 260, 32, 259}}, torch::kInt64).clamp_max(vocab - 1);
    torch::NoGradGuard no_grad;
    trained.model()->eval();
    nn::LlamaModel loaded = load_back(/*quantized=*/true);
    EXPECT_EQ(loaded->config().vocab_size, vocab);
    EXPECT_TRUE(torch::equal(loaded->forward(ids), trained.model()->forward(ids)));
    const torch::Tensor logits = load_back(/*quantized=*/false)->forward(ids);
    EXPECT_EQ(logits.size(2), vocab);

    const std::string merged_dir = adapter_dir + "-merged";
    nn::merge_adapter(path("model"), adapter_dir, merged_dir, {.dtype = torch::kFloat32});
    EXPECT_EQ(io::read_json_file(merged_dir + "/config.json")["vocab_size"], vocab);
    EXPECT_EQ(data::load_tokenizer(merged_dir)->vocab_size(), data::load_tokenizer(data::tokenizer_dir(path("model"), adapter_dir))->vocab_size());
    nn::ModelOptions plain;
    plain.compute_dtype = torch::kFloat32;
    plain.quantize_base = false;
    plain.lora.r = 0;
    nn::LlamaModel merged = nn::load_hf_model(merged_dir, plain);
    merged->eval();
    EXPECT_TRUE(torch::allclose(merged->forward(ids), logits, 1e-4, 1e-4)) << (merged->forward(ids) - logits).abs().max().item<double>();
  }

  // A run with the tokens <|cat|> and <|mat|> in its data.
  std::vector<std::string> with_token_data(std::vector<std::string> extra) {
    std::ofstream data(path("tokens.jsonl"));
    for (int i = 0; i < 24; ++i) data << R"({"text": "<|cat|> sat on the <|mat|> )" << i % 5 << R"("})" << "\n";
    extra.push_back("data.train=" + path("tokens.jsonl"));
    return extra;
  }
};

}  // namespace

TEST_F(TrainerRuns, ResumedRunEqualsTheUninterruptedOneBitForBit) {
  // Evaluation every 2 steps on a held-out quarter: it must not disturb the RNG or the data.
  const std::vector<std::string> with_eval = {"data.val_fraction=0.25", "training.eval_every=2"};
  const TrainSummary straight = Trainer(recipe("straight", with_eval)).run(StartMode::Fresh);
  EXPECT_EQ(straight.steps, 6);
  const auto expected = losses("straight");
  ASSERT_EQ(expected.size(), 6u);
  EXPECT_LT(expected.back(), expected.front()) << "the loss did not fall";

  const auto eval_losses = losses("straight", "eval_loss");
  ASSERT_EQ(eval_losses.size(), 3u);  // steps 2, 4, 6
  EXPECT_LT(eval_losses.back(), eval_losses.front()) << "the held-out loss did not fall";
  EXPECT_NEAR(losses("straight", "eval_perplexity").back(), std::exp(eval_losses.back()), 1e-9);

  const TrainSummary first = Trainer(recipe("resumed", with_eval)).run(StartMode::Fresh, {.stop = [](int64_t step) { return step == 3; }});
  EXPECT_TRUE(first.stopped_early);
  EXPECT_EQ(first.steps, 3);
  const TrainSummary second = Trainer(recipe("resumed", with_eval)).run(StartMode::Resume);
  EXPECT_EQ(second.steps, 6);
  EXPECT_EQ(losses("resumed"), expected);  // exact doubles: the same computation, step for step
  EXPECT_EQ(losses("resumed", "eval_loss"), eval_losses);
  const auto a = io::read_tensor_file(path("straight/checkpoint-000006/adapter/adapter_model.safetensors"));
  const auto b = io::read_tensor_file(path("resumed/checkpoint-000006/adapter/adapter_model.safetensors"));
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [key, tensor] : a) EXPECT_TRUE(torch::equal(tensor, b.at(key))) << key;

  // keep_last = 2: checkpoints 4 and 6 remain of 2, 4, 6.
  EXPECT_FALSE(fs::exists(path("straight/checkpoint-000002")));
  EXPECT_TRUE(fs::exists(path("straight/checkpoint-000004")));
  EXPECT_TRUE(fs::exists(path("straight/recipe.yaml")));
  EXPECT_EQ(Recipe::load(path("straight/recipe.yaml")).get_int("lora.r"), 4);
}

TEST_F(TrainerRuns, DataWithNothingToLearnFailsBeforeTheFirstStep) {
  std::ofstream data(path("masked.jsonl"));
  for (int i = 0; i < 8; ++i) data << R"({"input_ids": [5, 6, 7, 8], "labels": [-100, -100, -100, -100]})" << "\n";
  data.close();
  try {
    Trainer(recipe("masked", {"data.train=" + path("masked.jsonl"), "data.format=tokenized"}));
    ADD_FAILURE() << "a run without a single target was built";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("masked.jsonl: no example has a token to train on"), std::string::npos) << error.what();
  }
  EXPECT_FALSE(fs::exists(path("masked/metrics.jsonl")));
}

TEST_F(TrainerRuns, ACorruptTrainerStateIsNamedOnResume) {
  Trainer(recipe("run", {"training.max_steps=2"})).run(StartMode::Fresh);
  const auto newest = checkpoints(path("run")).back();
  std::ofstream((newest / "trainer_state.json").string()) << R"({"step": "two", "data": {"epoch": 0}})";
  try {
    Trainer(recipe("run", {"training.max_steps=4"})).run(StartMode::Resume);
    ADD_FAILURE() << "resumed from a corrupt trainer_state.json";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("checkpoint-000002/trainer_state.json: a key is missing or of the wrong type"),
              std::string::npos)
        << error.what();
  }
}

TEST_F(TrainerRuns, AccumulationDoesNotChangeTheLoss) {
  // One micro-batch of 4 rows, or 4 micro-batches of 1: the same tokens, the same first loss.
  const auto one = recipe("one", {"training.micro_batch_size=4", "training.gradient_accumulation_steps=1",
                                  "training.max_steps=1", "lora.dropout=0", "data.packing=false"});
  const auto four = recipe("four", {"training.micro_batch_size=1", "training.gradient_accumulation_steps=4",
                                    "training.max_steps=1", "lora.dropout=0", "data.packing=false"});
  Trainer(one).run(StartMode::Fresh);
  Trainer(four).run(StartMode::Fresh);
  EXPECT_NEAR(losses("one").at(0), losses("four").at(0), 1e-5 * losses("one").at(0));
  EXPECT_THROW(Trainer(recipe("none")).run(StartMode::Resume), Error) << "nothing to resume";
}

// DoRA: the run starts where LoRA's does (the magnitudes equal the norms, B = 0) and then
// takes other steps; the adapter holds PEFT's magnitude keys; with dropout and activation
// checkpointing on, a resumed run equals the uninterrupted one bit for bit.
TEST_F(TrainerRuns, DoraRunTakesItsOwnStepsAndResumesBitForBit) {
  const std::vector<std::string> dora = {"lora.use_dora=true", "training.activation_checkpointing=true"};
  Trainer(recipe("lora", {"training.activation_checkpointing=true"})).run(StartMode::Fresh);
  Trainer(recipe("straight", dora)).run(StartMode::Fresh);
  const auto expected = losses("straight"), lora = losses("lora");
  ASSERT_EQ(expected.size(), 6u);
  EXPECT_EQ(expected.front(), lora.front()) << "DoRA starts as the base model, as LoRA does";
  EXPECT_NE(expected.back(), lora.back()) << "DoRA's steps differ from LoRA's";
  Trainer(recipe("resumed", dora)).run(StartMode::Fresh, {.stop = [](int64_t step) { return step == 3; }});
  Trainer(recipe("resumed", dora)).run(StartMode::Resume);
  EXPECT_EQ(losses("resumed"), expected);
  const auto a = io::read_tensor_file(path("straight/adapter/adapter_model.safetensors"));
  const auto b = io::read_tensor_file(path("resumed/adapter/adapter_model.safetensors"));
  ASSERT_EQ(a.size(), b.size());
  int magnitudes = 0;
  for (const auto& [key, tensor] : a) {
    EXPECT_TRUE(torch::equal(tensor, b.at(key))) << key;
    magnitudes += key.size() > 21 && key.compare(key.size() - 21, 21, "lora_magnitude_vector") == 0;
  }
  EXPECT_EQ(magnitudes * 3, static_cast<int>(a.size()));
}

// data.add_special_tokens: the adapter carries a tokenizer that knows the new tokens (ids from
// the tokenizer's size on, one id each), the model grows to hold them and trains only their
// rows of embed_tokens and the untied lm_head (PEFT's keys and trainable_token_indices); the
// run resumes bit for bit; the adapter loads back to the trained model's logits, and merge
// writes the grown model (vocab_size, the rows, the tokenizer) computing the same.
TEST_F(TrainerRuns, AddedTokensTrainOnlyTheirRowsLoadBackMergeAndResumeBitForBit) {
  const auto tokens = with_token_data({"data.add_special_tokens=[<|cat|>, <|mat|>]"});
  Trainer straight(recipe("straight", tokens));
  straight.run(StartMode::Fresh);
  const std::string adapter_dir = path("straight/adapter");
  const auto tokenizer = data::load_tokenizer(adapter_dir);
  EXPECT_EQ(tokenizer->token_id("<|cat|>"), 259);
  EXPECT_EQ(tokenizer->token_id("<|mat|>"), 260);
  EXPECT_EQ(tokenizer->encode("<|cat|> x"), (std::vector<int64_t>{259, 32, 120}));
  EXPECT_EQ(data::load_tokenizer(path("model"))->vocab_size(), 259) << "the base model's tokenizer is left as it was";
  const auto config = io::read_json_file(adapter_dir + "/adapter_config.json");
  EXPECT_EQ(config["trainable_token_indices"], nlohmann::json({{"embed_tokens", {259, 260}}, {"lm_head", {259, 260}}}));
  const auto tensors = io::read_tensor_file(adapter_dir + "/adapter_model.safetensors");
  const torch::Tensor embed_rows = tensors.at("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta");
  const torch::Tensor head_rows = tensors.at("base_model.model.lm_head.token_adapter.trainable_tokens_delta");
  EXPECT_EQ(embed_rows.sizes(), (std::vector<int64_t>{2, 64}));
  // They started as the mean row (transformers' resize) and moved.
  const auto base = io::read_tensor_file(path("model/model.safetensors"));
  const torch::Tensor mean = base.at("model.embed_tokens.weight").to(torch::kFloat32).mean(0);
  EXPECT_GT((embed_rows - mean).abs().max().item<double>(), 1e-4);
  EXPECT_GT((head_rows - base.at("lm_head.weight").to(torch::kFloat32).mean(0)).abs().max().item<double>(), 1e-4);

  Trainer(recipe("resumed", tokens)).run(StartMode::Fresh, {.stop = [](int64_t step) { return step == 3; }});
  Trainer(recipe("resumed", tokens)).run(StartMode::Resume);
  EXPECT_EQ(losses("resumed"), losses("straight"));
  const auto resumed = io::read_tensor_file(path("resumed/adapter/adapter_model.safetensors"));
  ASSERT_EQ(resumed.size(), tensors.size());
  for (const auto& [key, tensor] : tensors) EXPECT_TRUE(torch::equal(tensor, resumed.at(key))) << key;

  EXPECT_EQ(nn::read_peft_adapter(adapter_dir).trainable_tokens, (std::vector<int64_t>{259, 260}));
  expect_loads_back_and_merges(straight, adapter_dir, 261);
}

// lora.modules_to_save: embed_tokens and lm_head train whole, saved as PEFT saves them (their
// weights under their own paths, no token rows); with new tokens they hold the grown vocabulary.
TEST_F(TrainerRuns, ModulesToSaveTrainWholeMatricesLoadBackMergeAndResumeBitForBit) {
  const auto whole = with_token_data({"lora.modules_to_save=[embed_tokens, lm_head]", "data.add_special_tokens=[<|cat|>, <|mat|>]"});
  Trainer straight(recipe("straight", whole));
  straight.run(StartMode::Fresh);
  const std::string adapter_dir = path("straight/adapter");
  const auto config = io::read_json_file(adapter_dir + "/adapter_config.json");
  EXPECT_EQ(config["modules_to_save"], nlohmann::json({"embed_tokens", "lm_head"}));
  EXPECT_TRUE(config["trainable_token_indices"].is_null()) << "whole matrices take no rows";
  const auto tensors = io::read_tensor_file(adapter_dir + "/adapter_model.safetensors");
  const auto base = io::read_tensor_file(path("model/model.safetensors"));
  for (const std::string name : {"model.embed_tokens.weight", "lm_head.weight"}) {
    const torch::Tensor& trained = tensors.at("base_model.model." + name);
    ASSERT_EQ(trained.sizes(), (std::vector<int64_t>{261, 64})) << name;
    const torch::Tensor moved = (trained.narrow(0, 0, 259) - base.at(name).to(torch::kFloat32)).abs().amax(1).gt(1e-6);
    EXPECT_GT(moved.sum().item<int64_t>(), 0) << name << ": the old rows train too";
  }
  EXPECT_EQ(tensors.count("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"), 0u);

  Trainer(recipe("resumed", whole)).run(StartMode::Fresh, {.stop = [](int64_t step) { return step == 3; }});
  Trainer(recipe("resumed", whole)).run(StartMode::Resume);
  EXPECT_EQ(losses("resumed"), losses("straight"));
  const auto resumed = io::read_tensor_file(path("resumed/adapter/adapter_model.safetensors"));
  for (const auto& [key, tensor] : tensors) EXPECT_TRUE(torch::equal(tensor, resumed.at(key))) << key;
  expect_loads_back_and_merges(straight, adapter_dir, 261);

  // Only embed_tokens whole: lm_head keeps its token rows.
  Trainer embed_only(recipe("embed_only", with_token_data({"lora.modules_to_save=[embed_tokens]", "data.add_special_tokens=[<|cat|>, <|mat|>]",
                                                           "training.max_steps=2"})));
  embed_only.run(StartMode::Fresh);
  EXPECT_EQ(io::read_json_file(path("embed_only/adapter/adapter_config.json"))["trainable_token_indices"],
            nlohmann::json({{"lm_head", {259, 260}}}));
  expect_loads_back_and_merges(embed_only, path("embed_only/adapter"), 261);
}

// LoRA+: after the first step (B starts at zero, so A's gradient is zero and only B moves),
// the B matrices of a ratio-16 run are 16 times those of a plain run, the A matrices equal;
// ratio 1 is the plain run bit for bit.
TEST_F(TrainerRuns, LoraPlusScalesOnlyTheBMatricesRate) {
  const auto adapter_after_one_step = [&](const std::string& run, const std::string& ratio) {
    Trainer(recipe(run, {"training.max_steps=1", "training.gradient_accumulation_steps=1", "lora.dropout=0", "schedule.warmup_steps=0",
                         "optimizer.loraplus_lr_ratio=" + ratio}))
        .run(StartMode::Fresh);
    return io::read_tensor_file(path(run + "/adapter/adapter_model.safetensors"));
  };
  const auto plain = adapter_after_one_step("plain", "0");
  const auto one = adapter_after_one_step("one", "1");
  const auto sixteen = adapter_after_one_step("sixteen", "16");
  int b_matrices = 0;
  for (const auto& [key, tensor] : plain) {
    EXPECT_TRUE(torch::equal(one.at(key), tensor)) << key;
    if (key.find("lora_B") != std::string::npos) {
      ++b_matrices;
      ASSERT_GT(tensor.abs().max().item<double>(), 0) << key << " did not move";
      EXPECT_TRUE(torch::allclose(sixteen.at(key), 16 * tensor, 1e-5, 0)) << key;
    } else {
      EXPECT_TRUE(torch::equal(sixteen.at(key), tensor)) << key;
    }
  }
  EXPECT_GT(b_matrices, 0);
}

// NEFTune's noise as transformers' hook draws it: uniform in +-alpha / sqrt(seq * hidden);
// in training mode only (eval and generation see the plain embeddings).
TEST_F(TrainerRuns, NeftuneNoiseIsUniformAtTrlsScaleInTrainingOnly) {
  torch::manual_seed(0);
  const torch::Tensor noise = nn::neftune_noise(torch::zeros({4, 64, 32}), 5.0);
  const double bound = 5.0 / std::sqrt(64.0 * 32.0);
  EXPECT_LE(noise.abs().max().item<double>(), bound);
  EXPECT_GE(noise.abs().max().item<double>(), 0.99 * bound);
  EXPECT_LT(std::abs(noise.mean().item<double>()), 0.02 * bound);
  EXPECT_NEAR(noise.std().item<double>(), bound / std::sqrt(3.0), 0.02 * bound);

  nn::ModelOptions options;
  options.compute_dtype = torch::kFloat32;
  options.quantize_base = false;
  options.lora.r = 0;
  nn::LlamaModel plain = nn::load_hf_model(path("model"), options);
  options.neftune_alpha = 5.0;
  nn::LlamaModel noisy = nn::load_hf_model(path("model"), options);
  const torch::Tensor ids = torch::randint(0, 259, {2, 16});
  torch::NoGradGuard no_grad;
  plain->eval();
  noisy->eval();
  EXPECT_TRUE(torch::equal(noisy->forward(ids), plain->forward(ids))) << "no noise in eval mode";
  noisy->train();
  const torch::Tensor first = noisy->forward(ids), second = noisy->forward(ids);
  EXPECT_FALSE(torch::allclose(first, second)) << "fresh noise each forward";
  EXPECT_FALSE(torch::allclose(first, plain->forward(ids)));
}

// A NEFTune run changes the losses and resumes bit for bit (its noise comes from the
// generators the checkpoint saves).
TEST_F(TrainerRuns, NeftuneRunResumesBitForBit) {
  const std::vector<std::string> neftune = {"training.neftune_alpha=5"};
  Trainer(recipe("plain")).run(StartMode::Fresh);
  Trainer(recipe("straight", neftune)).run(StartMode::Fresh);
  const auto expected = losses("straight");
  ASSERT_EQ(expected.size(), 6u);
  EXPECT_NE(expected.front(), losses("plain").front()) << "the noise changes the first loss";
  Trainer(recipe("resumed", neftune)).run(StartMode::Fresh, {.stop = [](int64_t step) { return step == 3; }});
  Trainer(recipe("resumed", neftune)).run(StartMode::Resume);
  EXPECT_EQ(losses("resumed"), expected);
  const auto a = io::read_tensor_file(path("straight/adapter/adapter_model.safetensors"));
  const auto b = io::read_tensor_file(path("resumed/adapter/adapter_model.safetensors"));
  for (const auto& [key, tensor] : a) EXPECT_TRUE(torch::equal(tensor, b.at(key))) << key;
}

// lora.init_from: a run starts from the adapter's weights (at lr 0 it ends with them, bit for
// bit), and an adapter of another rank, alpha, or set of modules is refused, the key named.
TEST_F(TrainerRuns, InitFromStartsAtTheAdapterAndRefusesAnotherShape) {
  Trainer(recipe("first", {"training.max_steps=3"})).run(StartMode::Fresh);
  const std::string adapter = path("first/adapter");
  Trainer(recipe("again", {"training.max_steps=1", "optimizer.lr=0", "lora.init_from=" + adapter})).run(StartMode::Fresh);
  const auto before = io::read_tensor_file(adapter + "/adapter_model.safetensors");
  const auto after = io::read_tensor_file(path("again/adapter/adapter_model.safetensors"));
  ASSERT_EQ(before.size(), after.size());
  for (const auto& [key, tensor] : before) EXPECT_TRUE(torch::equal(after.at(key), tensor)) << key;
  Trainer(recipe("fresh", {"training.max_steps=1", "optimizer.lr=0"})).run(StartMode::Fresh);
  EXPECT_LT(losses("again").front(), losses("fresh").front()) << "the trained adapter starts lower";

  const auto refusal = [&](const std::string& run, std::vector<std::string> extra) {
    extra.insert(extra.begin(), "lora.init_from=" + adapter);  // a later override wins
    try {
      Trainer(recipe(run, extra)).run(StartMode::Fresh);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(refusal("r8", {"lora.r=8"}).find("key 'lora.init_from' (" + adapter + "): the adapter has r = 4, key 'lora.r' is 8"),
            std::string::npos)
      << refusal("r8", {"lora.r=8"});
  EXPECT_NE(refusal("alpha", {"lora.alpha=8"}).find("the adapter has lora_alpha = 32, key 'lora.alpha' is 8"), std::string::npos);
  EXPECT_NE(refusal("dora", {"lora.use_dora=true"}).find("the adapter has use_dora = false, key 'lora.use_dora' is true"),
            std::string::npos);
  const std::string fewer = refusal("fewer", {"lora.target_modules=[q_proj, v_proj]"});
  EXPECT_NE(fewer.find("key 'lora.init_from'"), std::string::npos) << fewer;
  EXPECT_NE(fewer.find("matches no adapted module"), std::string::npos) << fewer;
  EXPECT_NE(refusal("missing", {"lora.init_from=" + path("nowhere")}).find("nowhere"), std::string::npos);
}
