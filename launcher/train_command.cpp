// `shardlora train RECIPE [section.key=value ...] [--resume]`: one rank's training run.
// SIGTERM and SIGINT finish the current step, write a checkpoint and exit 0, so a preempted
// job resumes with --resume.
#include <csignal>
#include <cstdio>
#include <iostream>
#include <memory>

#include "commands.h"
#include "shardlora/train/recipe.h"
#include "shardlora/train/trainer.h"

namespace shardlora::launcher {
namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void request_stop(int signal) { g_stop_signal = signal; }

struct TrainArgs {
  std::string recipe;
  std::vector<std::string> overrides;
  bool resume = false;
  bool help_recipe = false;
};

int run_train(const TrainArgs& args) {
  if (args.help_recipe) {
    std::cout << train::recipe_help();
    return 0;
  }
  if (args.recipe.empty()) {
    std::cerr << "shardlora train: a recipe is required (the built-in demo is not built yet, issue 7); "
                 "see --help-recipe for the keys\n";
    return kExitUsage;
  }
  const train::Recipe recipe = train::Recipe::load(args.recipe, args.overrides);
  train::Trainer trainer(recipe);
  std::signal(SIGTERM, request_stop);
  std::signal(SIGINT, request_stop);
  const train::TrainSummary summary = trainer.run(args.resume, [](int64_t) { return g_stop_signal != 0; });
  std::printf("%s %lld/%lld steps, last loss %.4f; run directory %s\n",
              summary.stopped_early ? "stopped by signal after" : "trained", static_cast<long long>(summary.steps),
              static_cast<long long>(trainer.total_steps()), summary.last_loss, recipe.get_string("output.dir").c_str());
  return 0;
}

}  // namespace

Subcommand add_train_command(CLI::App& root) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* app = root.add_subcommand("train", "Fine-tune a model with QLoRA from a recipe YAML");
  app->add_option("RECIPE", args->recipe, "Recipe YAML")->check(CLI::ExistingFile);
  app->add_option("OVERRIDES", args->overrides, "section.key=value overrides");
  app->add_flag("--resume", args->resume, "Continue from the newest checkpoint in output.dir");
  app->add_flag("--help-recipe", args->help_recipe, "List every recipe key with its type, default and meaning");
  return {app, [args] { return run_train(*args); }};
}

}  // namespace shardlora::launcher
