#include "demo.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>

#include "shardlora/cluster/job.h"
#include "shardlora/data/utf8.h"
#include "shardlora/io/staging_directory.h"
#include "shardlora/kernels/check.h"
#include "shardlora/nn/random_model.h"
#include "shardlora/train/evaluation.h"
#include "shardlora/train/from_recipe.h"

namespace shardlora::embedded {
extern const char demo_recipe[], demo_train_data[], demo_eval_data[];
}

namespace shardlora::launcher {
namespace {

namespace fs = std::filesystem;

constexpr char kRecipeName[] = "recipes/demo.yaml (built in)";
constexpr int64_t kMaxAnswerTokens = 12;  // the longest answer is 6 letters and </s>

train::AccuracyResult accuracy(train::Trainer& trainer, const train::Recipe& recipe) {
  const data::Dataset eval(train::dataset_options_from(recipe, recipe.get_string("data.val")));
  std::vector<int64_t> all(static_cast<size_t>(eval.size()));
  std::iota(all.begin(), all.end(), int64_t{0});
  return train::evaluate_accuracy(trainer.model(), eval, all, trainer.tokenizer(), trainer.chat_template(), kMaxAnswerTokens);
}

// An untrained model's bytes need not be UTF-8 or printable.
std::string printable(std::string text) {
  const bool valid = data::is_valid_utf8(text);
  for (char& c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f || (!valid && byte >= 0x80)) c = '?';
  }
  return text;
}

void print_samples(const train::AccuracyResult& result) {
  for (const auto& sample : result.samples) {
    std::printf("    %s%s   (expected %s)  %s\n", sample.prompt.c_str(), printable(sample.generated).c_str(), sample.expected.c_str(),
                sample.correct ? "right" : "wrong");
  }
}

}  // namespace

int run_demo(const std::vector<std::string>& overrides, train::StartMode mode) {
  // The model and data follow output.dir unless the user placed them elsewhere.
  const std::string run_dir = train::Recipe::parse(embedded::demo_recipe, kRecipeName, overrides).get_string("output.dir");
  std::vector<std::string> placed = {"model.path=" + run_dir + "/model", "data.train=" + run_dir + "/data/train.jsonl",
                                     "data.val=" + run_dir + "/data/eval.jsonl"};
  placed.insert(placed.end(), overrides.begin(), overrides.end());
  const train::Recipe recipe = train::Recipe::parse(embedded::demo_recipe, kRecipeName, placed);

  std::printf("shardlora demo: QLoRA on a random-initialised Llama, task: reverse a string of 3-6 letters\n");
  const std::string model_dir = recipe.get_string("model.path");
  if (!fs::exists(model_dir + "/config.json")) {
    nn::RandomModelSpec spec = nn::model_preset("demo");
    spec.dtype = torch::kFloat32;
    io::StagingDirectory staging(model_dir, /*replace=*/false);
    nn::write_random_hf_model(staging.dir(), spec);
    staging.commit();
    std::printf("  base model   %s (init-model --preset demo, frozen in 4 bits)\n", model_dir.c_str());
  } else {
    std::printf("  base model   %s (kept from an earlier run)\n", model_dir.c_str());
  }
  for (const auto& [key, text] : {std::pair{"data.train", embedded::demo_train_data}, std::pair{"data.val", embedded::demo_eval_data}}) {
    const std::string path = recipe.get_string(key);
    fs::create_directories(fs::path(path).parent_path());
    io::write_file_atomically(path, text);
  }
  std::printf("  data         %s, %s\n", recipe.get_string("data.train").c_str(), recipe.get_string("data.val").c_str());

  train::check_run_directory(run_dir, mode);
  const auto start = std::chrono::steady_clock::now();
  const torch::Device device = cluster::rank_device(recipe.get_string("training.device"), cluster::detect_launch_env());
  std::printf("  device       %s\n", device.str().c_str());
  train::Trainer trainer(recipe, nullptr, device);
  const train::AccuracyResult before = accuracy(trainer, recipe);
  std::printf("  accuracy before training: %5.1f%% (%lld of %lld held-out strings)\n", 100 * before.accuracy(),
              static_cast<long long>(before.correct), static_cast<long long>(before.total));
  print_samples(before);
  const train::TrainSummary summary = train_with_progress(trainer, mode);
  if (summary.stopped_early) {
    std::printf("stopped after step %lld; `shardlora train --resume` continues the demo\n", static_cast<long long>(summary.steps));
    return 0;
  }
  const train::AccuracyResult after = accuracy(trainer, recipe);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("  accuracy after training:  %5.1f%% (%lld of %lld)\n", 100 * after.accuracy(), static_cast<long long>(after.correct),
              static_cast<long long>(after.total));
  print_samples(after);
  const nlohmann::json report = {{"accuracy_before", before.accuracy()}, {"accuracy_after", after.accuracy()},
                                 {"eval_examples", after.total},
                                 {"final_loss", summary.steps_run ? nlohmann::json(summary.last_loss) : nlohmann::json(nullptr)},
                                 {"steps", summary.steps},             {"seconds", seconds}};
  io::write_file_atomically(run_dir + "/demo_accuracy.json", report.dump(2) + "\n");
  if (summary.steps_run > 0) std::printf("final training loss %.4f\n", summary.last_loss);
  std::printf("done in %.0f s: accuracy %.1f%% -> %.1f%%; adapter (PEFT format) in %s/adapter\n", seconds, 100 * before.accuracy(), 100 * after.accuracy(), run_dir.c_str());
  std::printf("try it:  shardlora generate %s --adapter %s/adapter --recipe %s/recipe.yaml --prompt abcdef\n", model_dir.c_str(),
              run_dir.c_str(), run_dir.c_str());
  return 0;
}

}  // namespace shardlora::launcher
