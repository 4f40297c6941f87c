// Subcommands that are part of the interface but not built yet. Each one moves to its own
// file when its issue lands.
#include <iostream>

#include "commands.h"

namespace shardlora::launcher {
namespace {

struct PendingCommand {
  const char* name;
  const char* summary;
  const char* issue;
};

constexpr PendingCommand kPending[] = {
    {"slurm", "Write (and submit) a Slurm batch job for a recipe", "issue 9"},
};

}  // namespace

std::vector<Subcommand> add_pending_commands(CLI::App& root) {
  std::vector<Subcommand> commands;
  for (const PendingCommand& pending : kPending) {
    CLI::App* app = root.add_subcommand(pending.name, pending.summary);
    app->allow_extras();  // arguments are accepted, so the message below is what users see
    commands.push_back({app, [&pending] {
                          std::cerr << "shardlora " << pending.name << ": not implemented yet ("
                                    << pending.issue << ")\n";
                          return kExitUsage;
                        }});
  }
  return commands;
}

}  // namespace shardlora::launcher
