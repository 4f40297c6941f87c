// The built-in demo, `shardlora train` with no recipe: recipes/demo.yaml and its data
// (compiled into the executable) fine-tune a random-initialised model written by
// init-model's demo preset, on CPU in about a minute, with exact-match task accuracy on
// the held-out data printed before and after training.
#pragma once

#include <string>
#include <vector>

#include "shardlora/train/trainer.h"

namespace shardlora::launcher {

// The training loop with the command's progress display (train_command.cpp; `show` false on
// ranks other than 0); SIGTERM and SIGINT stop it after a checkpoint.
train::TrainSummary train_with_progress(train::Trainer& trainer, train::StartMode mode, bool show = true);

// `overrides` apply on top of the demo recipe; the model and data go under output.dir
// unless their paths are overridden too.
int run_demo(const std::vector<std::string>& overrides, train::StartMode mode);

}  // namespace shardlora::launcher
