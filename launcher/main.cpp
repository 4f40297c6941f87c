// `shardlora`: parses the command line, runs the chosen subcommand, maps errors to exit
// codes (see commands.h). Usage errors go to stderr with the usage text.
#include <iostream>

#include "commands.h"
#include "shardlora/cluster/cpu_threads.h"
#include "shardlora/kernels/check.h"

int main(int argc, char** argv) {
  using namespace shardlora::launcher;
  namespace cluster = shardlora::cluster;
  CLI::App root{"shardlora: QLoRA fine-tuning of large language models across GPUs and nodes", "shardlora"};
  root.set_version_flag("--version", std::string("shardlora ") + SHARDLORA_VERSION);
  root.require_subcommand(0, 1);  // extra words are then "not expected", named in the error

  const std::vector<Subcommand> commands = {add_env_command(root),      add_quantize_command(root), add_init_model_command(root),
                                            add_generate_command(root), add_merge_command(root),    add_train_command(root),
                                            add_eval_command(root),     add_estimate_command(root), add_plot_command(root),
                                            add_launch_command(root),   add_slurm_command(root)};

  try {
    root.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    if (error.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {
      return root.exit(error);  // --help, --version: printed to stdout, exit 0
    }
    std::cerr << "shardlora: " << error.what() << "\n\n" << root.help();
    return kExitUsage;
  }

  if (root.get_subcommands().empty()) {
    std::cerr << "shardlora: a subcommand is required\n\n" << root.help();
    return kExitUsage;
  }
  for (const Subcommand& command : commands) {
    if (!command.app->parsed()) continue;
    try {
      // Every command computes with the CPUs its rank is given (train may set its recipe's).
      cluster::apply_threads(cluster::choose_threads(0, cluster::read_cpu_budget(), cluster::process_env(),
                                                     cluster::detect_launch_env().local_world_size));
      return command.run();
    } catch (const std::exception& error) {
      std::cerr << "shardlora " << command.app->get_name() << ": error: " << error.what() << "\n";
      return kExitError;
    }
  }
  return kExitUsage;  // unreachable: every registered subcommand is in `commands`
}
