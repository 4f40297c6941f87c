// `shardlora train [RECIPE] [section.key=value ...] [--resume | --overwrite]`: one rank's
// training run; without a recipe, the built-in demo (demo.h). Progress is a live bar on a
// terminal and one plain line per log interval otherwise. SIGTERM, SIGINT and SIGUSR1 finish
// the current step, write a checkpoint and exit 0, so a preempted job resumes with --resume.
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>

#include "commands.h"
#include "demo.h"
#include "progress_bar.h"
#include "shardlora/cluster/cpu_threads.h"
#include "shardlora/cluster/job.h"
#include "shardlora/cluster/topology.h"
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
  bool overwrite = false;
  bool auto_resume = false;
  bool help_recipe = false;
};

std::string duration_text(double seconds) {
  const auto total = static_cast<long long>(seconds + 0.5);
  char text[32];
  if (total >= 3600) {
    std::snprintf(text, sizeof text, "%lldh%02lldm", total / 3600, total / 60 % 60);
  } else {
    std::snprintf(text, sizeof text, "%lldm%02llds", total / 60, total % 60);
  }
  return text;
}

std::string progress_text(const train::StepProgress& p) {
  char text[256];
  std::snprintf(text, sizeof text, "step %lld/%lld  loss %.4f  lr %.2e  %.0f tok/s  eta %s  peak %.0f MiB",
                static_cast<long long>(p.step), static_cast<long long>(p.total_steps), p.loss, p.lr, p.tokens_per_second,
                duration_text(p.eta_s).c_str(), static_cast<double>(p.peak_rss_bytes) / (1 << 20));
  return text;
}

}  // namespace

train::TrainSummary train_with_progress(train::Trainer& trainer, train::StartMode mode, bool show) {
  ProgressBar bar;
  train::TrainHooks hooks;
  hooks.stop = [](int64_t) { return g_stop_signal != 0; };
  hooks.on_step = [&bar](const train::StepProgress& p) {
    if (bar.enabled()) {
      bar.update(static_cast<double>(p.step) / static_cast<double>(p.total_steps), progress_text(p));
    } else if (p.logged) {
      bar.print_line(progress_text(p));
    }
  };
  hooks.on_eval = [&bar](int64_t step, const train::LossResult& result) {
    char text[160];
    std::snprintf(text, sizeof text, "eval at step %lld: loss %.4f  perplexity %.3f  (%lld tokens)", static_cast<long long>(step),
                  result.loss, result.perplexity(), static_cast<long long>(result.tokens));
    bar.print_line(text);
  };
  // SIGUSR1 is what mpirun and srun forward to every rank (the Slurm batch script sends it).
  for (const int signal : {SIGTERM, SIGINT, SIGUSR1}) std::signal(signal, request_stop);
  const train::TrainSummary summary = trainer.run(mode, hooks);
  for (const int signal : {SIGTERM, SIGINT, SIGUSR1}) std::signal(signal, SIG_DFL);
  if (show) bar.finish(summary.stopped_early ? "stopped" : "done");
  return summary;
}

namespace {

cluster::JobOptions job_options_from(const train::Recipe& recipe, const cluster::LaunchEnv& launch) {
  cluster::JobOptions options;
  options.backend = recipe.get_string("distributed.backend");
  options.device = cluster::rank_device(recipe.get_string("training.device"), launch);
  options.timeout = std::chrono::seconds(recipe.get_int("distributed.timeout_s"));
  return options;
}

int train_recipe(const train::Recipe& recipe, train::StartMode mode, cluster::Job& job, torch::Device device);

int run_train(TrainArgs args) {
  if (args.help_recipe) {
    std::cout << train::recipe_help();
    return 0;
  }
  if (args.resume + args.overwrite + args.auto_resume > 1) {
    std::cerr << "shardlora train: --resume, --auto-resume and --overwrite exclude each other\n";
    return kExitUsage;
  }
  train::StartMode mode =
      args.resume ? train::StartMode::Resume : args.overwrite ? train::StartMode::Overwrite : train::StartMode::Fresh;
  // `shardlora train lora.r=8` is the demo with an override, not a recipe named "lora.r=8".
  if (!args.recipe.empty() && args.recipe.find('=') != std::string::npos && !std::filesystem::exists(args.recipe)) {
    args.overrides.insert(args.overrides.begin(), args.recipe);
    args.recipe.clear();
  }
  if (args.recipe.empty()) {
    SHARDLORA_CHECK(!args.auto_resume, "--auto-resume needs a RECIPE (the demo resumes with --resume)");
    const cluster::LaunchEnv launch = cluster::detect_launch_env();
    // N copies of the demo would write one directory at once.
    SHARDLORA_CHECK(launch.world_size == 1, "the built-in demo runs on one rank (this is rank ", launch.rank, " of ",
                    launch.world_size, " under ", cluster::launch_source_name(launch.source),
                    "); give a recipe to train on several ranks");
    return run_demo(args.overrides, mode);
  }
  const train::Recipe recipe = train::Recipe::load(args.recipe, args.overrides);
  if (args.auto_resume && !train::checkpoints(recipe.get_string("output.dir")).empty()) mode = train::StartMode::Resume;
  train::check_run_directory(recipe.get_string("output.dir"), mode);
  const cluster::LaunchEnv launch = cluster::detect_launch_env();
  cluster::apply_threads(cluster::choose_threads(static_cast<int>(recipe.get_int("training.threads")), cluster::read_cpu_budget(),
                                                 cluster::process_env(), launch.local_world_size));
  const cluster::JobOptions job_options = job_options_from(recipe, launch);
  const auto job = cluster::Job::join(job_options, launch);
  if (!job->distributed()) return train_recipe(recipe, mode, *job, job_options.device);
  try {
    return train_recipe(recipe, mode, *job, job_options.device);
  } catch (const std::exception& error) {
    // One rank failing must not leave the others waiting in a collective.
    std::fprintf(stderr, "shardlora train (rank %d of %d): error: %s\n", job->launch().rank, job->launch().world_size, error.what());
    std::fflush(stderr);
    job->abort(kExitError);
  }
}

int train_recipe(const train::Recipe& recipe, train::StartMode mode, cluster::Job& job, torch::Device device) {
  dist::Communicator* comm = job.communicator();
  const cluster::Topology topology = cluster::gather_topology(comm, job.launch(), device);
  const bool rank0 = job.launch().rank == 0;
  if (rank0) {
    std::fputs(cluster::describe_topology(topology, recipe.get_string("distributed.strategy")).c_str(), stdout);
    std::fflush(stdout);
  }
  // Loading may take long on some ranks (a slow filesystem): the collectives of setup wait
  // up to distributed.load_timeout_s, training's up to distributed.timeout_s.
  if (comm) comm->set_timeout(std::chrono::seconds(recipe.get_int("distributed.load_timeout_s")));
  train::Trainer trainer(recipe, comm, device);
  if (comm) comm->set_timeout(std::chrono::seconds(recipe.get_int("distributed.timeout_s")));
  const train::TrainSummary summary = train_with_progress(trainer, mode, rank0);
  if (!rank0) return 0;
  const std::string run_dir = recipe.get_string("output.dir");
  if (summary.steps_run == 0) {
    std::printf("%s: already trained (%lld steps); the adapter is in %s/adapter\n", run_dir.c_str(),
                static_cast<long long>(summary.steps), run_dir.c_str());
    return 0;
  }
  std::printf("%s %lld/%lld steps, last loss %.4f; data: %s; run directory %s\n",
              summary.stopped_early ? "stopped by signal after" : "trained", static_cast<long long>(summary.steps),
              static_cast<long long>(trainer.total_steps()), summary.last_loss, data::describe(summary.data).c_str(),
              run_dir.c_str());
  return 0;
}

}  // namespace

Subcommand add_train_command(CLI::App& root) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* app = root.add_subcommand("train", "Fine-tune a model with QLoRA from a recipe YAML (no recipe: the built-in demo)");
  app->add_option("RECIPE", args->recipe, "Recipe YAML (omit it for the demo)");
  app->add_option("OVERRIDES", args->overrides, "section.key=value overrides");
  app->add_flag("--resume", args->resume, "Continue from the newest checkpoint in output.dir");
  app->add_flag("--auto-resume", args->auto_resume,
                "Resume when output.dir holds a checkpoint, else start fresh (a batch job that may be requeued)");
  app->add_flag("--overwrite", args->overwrite, "Start over in an output.dir that holds a run (its checkpoints are removed)");
  app->add_flag("--help-recipe", args->help_recipe, "List every recipe key with its type, default and meaning");
  return {app, [args] {
            if (!args->recipe.empty() && args->recipe.find('=') == std::string::npos && !std::filesystem::is_regular_file(args->recipe)) {
              std::cerr << "shardlora train: RECIPE: file not found: " << args->recipe << "\n";
              return kExitUsage;
            }
            return run_train(*args);
          }};
}

}  // namespace shardlora::launcher
