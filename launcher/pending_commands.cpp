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
  const char* plan = nullptr;  // what it will do, for commands the README already shows
};

constexpr PendingCommand kPending[] = {
    {"train", "Fine-tune a model with QLoRA from a recipe YAML (no recipe: the built-in CPU demo)", "issue 7",
     "With no recipe, `shardlora train` will run the built-in demo: a tiny random Llama-family model\n"
     "quantized to NF4 with double quantization, a byte-level tokenizer and a synthetic instruction\n"
     "dataset, LoRA fine-tuning on the CPU for a few hundred steps, a PEFT adapter written to\n"
     "runs/demo/. Nothing is downloaded.\n"},
    {"launch", "Spawn and supervise local ranks (torchrun-style)", "issue 8"},
    {"eval", "Evaluate loss and perplexity on a dataset", "issue 7"},
    {"estimate", "Estimate GPU and host memory of a recipe", "issue 7"},
    {"slurm", "Write (and submit) a Slurm batch job for a recipe", "issue 9"},
    {"plot", "Plot the metrics of a run", "issue 7"},
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
                          if (pending.plan) std::cerr << "\n" << pending.plan;
                          return kExitUsage;
                        }});
  }
  return commands;
}

}  // namespace shardlora::launcher
