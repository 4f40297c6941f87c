// `shardlora eval RECIPE [overrides] [--adapter DIR | --base] [--data FILE] [--accuracy]`:
// mean loss and perplexity of the recipe's model with an adapter on a dataset, and with
// --accuracy exact-match task accuracy by greedy generation. The adapter defaults to the
// run's (output.dir/adapter, else its newest checkpoint's); the data to data.val, else the
// held-out data.val_fraction of data.train, as training evaluated.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <numeric>

#include "commands.h"
#include "shardlora/data/tokenizer.h"
#include "shardlora/kernels/check.h"
#include "shardlora/nn/hf_loader.h"
#include "shardlora/nn/peft_adapter.h"
#include "shardlora/train/evaluation.h"
#include "shardlora/train/from_recipe.h"
#include "shardlora/train/trainer.h"

namespace shardlora::launcher {
namespace {

namespace fs = std::filesystem;

struct EvalArgs {
  std::string recipe;
  std::vector<std::string> overrides;
  std::string adapter_dir;
  bool base_only = false;
  std::string data_path;
  bool accuracy = false;
  int64_t max_new_tokens = 64;
  int64_t limit = 0;
  bool json = false;
};

// output.dir/adapter, else the newest checkpoint's adapter; empty when the run has neither.
std::string run_adapter(const std::string& run_dir) {
  if (fs::exists(run_dir + "/adapter/adapter_config.json")) return run_dir + "/adapter";
  const auto found = train::checkpoints(run_dir);
  return found.empty() ? "" : (found.back() / "adapter").string();
}

int run_eval(const EvalArgs& args) {
  const train::Recipe recipe = train::Recipe::load(args.recipe, args.overrides);
  recipe.require_paths({"model.path"});
  std::string adapter_dir = args.adapter_dir;
  if (adapter_dir.empty() && !args.base_only) {
    adapter_dir = run_adapter(recipe.get_string("output.dir"));
    SHARDLORA_CHECK(!adapter_dir.empty(), recipe.get_string("output.dir"),
                    ": no adapter/ and no checkpoint: name one with --adapter, or evaluate the base model with --base");
  }

  // The data: --data, else data.val, else data.train's held-out split.
  std::string data_path = args.data_path.empty() ? recipe.get_string("data.val") : args.data_path;
  const bool held_out = data_path.empty();
  if (held_out) {
    recipe.require_paths({"data.train"});
    SHARDLORA_CHECK(recipe.get_float("data.val_fraction") > 0, args.recipe,
                    ": no evaluation data: pass --data, or set data.val or data.val_fraction");
    data_path = recipe.get_string("data.train");
  } else {
    SHARDLORA_CHECK(fs::exists(data_path), data_path, ": no such dataset");
  }
  const data::Dataset dataset(train::dataset_options_from(recipe, data_path));
  std::vector<int64_t> indices, unused;
  if (held_out) {
    data::split_indices(dataset.size(), recipe.get_float("data.val_fraction"), static_cast<uint64_t>(recipe.get_int("training.seed")),
                        &unused, &indices);
  } else {
    indices.resize(static_cast<size_t>(dataset.size()));
    std::iota(indices.begin(), indices.end(), int64_t{0});
  }
  if (args.limit > 0 && static_cast<int64_t>(indices.size()) > args.limit) indices.resize(static_cast<size_t>(args.limit));
  SHARDLORA_CHECK(!indices.empty(), data_path, ": no samples to evaluate");

  const std::string model_dir = recipe.get_string("model.path");
  const auto tokenizer = data::load_tokenizer(data::tokenizer_dir(model_dir, adapter_dir));
  const data::ChatTemplate chat_template = train::chat_template_from(recipe, model_dir, *tokenizer);
  nn::ModelOptions options = train::model_options_from(recipe);
  options.activation_checkpointing = false;
  options.lora.r = 0;
  std::optional<nn::PeftAdapter> adapter;
  if (!adapter_dir.empty()) {
    adapter = nn::read_peft_adapter(adapter_dir);
    nn::set_adapter_options(*adapter, options);
  }
  nn::LlamaModel model = nn::load_hf_model(model_dir, options);
  if (adapter) nn::load_adapter_weights(model, *adapter, adapter_dir);

  const auto start = std::chrono::steady_clock::now();
  const auto loss = train::evaluate_loss(model, dataset, indices, *tokenizer, train::loader_options_from(recipe, &chat_template));
  std::optional<train::AccuracyResult> accuracy;
  if (args.accuracy) {
    accuracy = train::evaluate_accuracy(model, dataset, indices, *tokenizer, chat_template, args.max_new_tokens);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  nlohmann::json result = {{"data", data_path},
                           {"split", held_out ? "held-out data.val_fraction" : "all"},
                           {"samples", indices.size()},
                           {"adapter", adapter_dir.empty() ? nlohmann::json(nullptr) : nlohmann::json(adapter_dir)},
                           {"seconds", seconds}};
  if (loss) {
    result["loss"] = loss->loss;
    result["perplexity"] = loss->perplexity();
    result["tokens"] = loss->tokens;
  }
  if (accuracy) {
    result["accuracy"] = accuracy->accuracy();
    result["correct"] = accuracy->correct;
  }
  if (args.json) {
    std::cout << result.dump() << "\n";
    return 0;
  }
  std::printf("%s: %zu samples%s, adapter %s\n", data_path.c_str(), indices.size(), held_out ? " (held out of data.train)" : "",
              adapter_dir.empty() ? "none (base model)" : adapter_dir.c_str());
  if (loss) {
    std::printf("loss        %.4f over %lld target tokens\nperplexity  %.3f\n", loss->loss, static_cast<long long>(loss->tokens),
                loss->perplexity());
  } else {
    std::printf("loss        no target tokens\n");
  }
  if (accuracy) {
    std::printf("accuracy    %.1f%% (%lld of %lld exact matches)\n", 100 * accuracy->accuracy(),
                static_cast<long long>(accuracy->correct), static_cast<long long>(accuracy->total));
  }
  std::fprintf(stderr, "evaluated in %.1f s\n", seconds);
  return 0;
}

}  // namespace

Subcommand add_eval_command(CLI::App& root) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* app = root.add_subcommand("eval", "Loss, perplexity (and task accuracy) of a model and adapter on a dataset");
  app->add_option("RECIPE", args->recipe, "Recipe YAML of the run")->required()->check(CLI::ExistingFile);
  app->add_option("OVERRIDES", args->overrides, "section.key=value overrides");
  auto* adapter = app->add_option("--adapter", args->adapter_dir, "PEFT adapter (default: output.dir's)")->check(CLI::ExistingDirectory);
  app->add_flag("--base", args->base_only, "Evaluate the base model without an adapter")->excludes(adapter);
  app->add_option("--data", args->data_path, "Dataset in the recipe's data.format (default: data.val or the held-out split)");
  app->add_flag("--accuracy", args->accuracy, "Also score greedy generations against each last assistant message (alpaca / chat)");
  app->add_option("--max-new-tokens", args->max_new_tokens, "Longest generated answer for --accuracy")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app->add_option("--limit", args->limit, "Evaluate only the first N samples (0: all)")->check(CLI::NonNegativeNumber);
  app->add_flag("--json", args->json, "Print the results as one JSON object");
  return {app, [args] { return run_eval(*args); }};
}

}  // namespace shardlora::launcher
