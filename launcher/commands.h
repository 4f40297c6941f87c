// The subcommands of `shardlora`. Each add_* function registers one on the root app and
// returns what main() runs when it was chosen.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <vector>

namespace shardlora::launcher {

// Exit codes: 0 success, 1 a run-time error, 2 a usage error or a command not available.
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;

struct Subcommand {
  CLI::App* app;
  std::function<int()> run;
};

Subcommand add_env_command(CLI::App& root);
Subcommand add_quantize_command(CLI::App& root);
Subcommand add_init_model_command(CLI::App& root);
Subcommand add_generate_command(CLI::App& root);
Subcommand add_merge_command(CLI::App& root);
Subcommand add_train_command(CLI::App& root);
Subcommand add_eval_command(CLI::App& root);
Subcommand add_estimate_command(CLI::App& root);
Subcommand add_plot_command(CLI::App& root);
Subcommand add_launch_command(CLI::App& root);
Subcommand add_slurm_command(CLI::App& root);

}  // namespace shardlora::launcher
