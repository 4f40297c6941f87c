// The training loop of one rank, built from a recipe: the model (4-bit base + LoRA), the
// data loader, AdamW. Each optimizer step runs gradient_accumulation_steps micro-batches;
// the loss is summed over target tokens and the gradients divided by the step's token count,
// so accumulation does not change the loss. A target is taken where its label is not -100
// and it lies in the same packed document as the token predicting it.
//
// Every training.eval_every steps (and at the end) the mean loss and perplexity over the
// validation data (data.val, or the data.val_fraction held out of data.train) are logged.
//
// The run directory (output.dir) holds recipe.yaml (resolved), metrics.jsonl (one line per
// log interval and per evaluation) and checkpoint-NNNNNN/ directories: the adapter in PEFT
// format, optimizer.safetensors, rng.safetensors and trainer_state.json (step, data
// position). A checkpoint is assembled beside its place and renamed in; the last
// training.keep_last are kept. run(resume) continues from the newest one; on the CPU the
// resumed loss sequence equals the uninterrupted run's bit for bit.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "shardlora/train/recipe.h"

namespace shardlora::train {

struct TrainSummary {
  int64_t steps = 0;         // optimizer steps completed in the run directory
  bool stopped_early = false;
  double last_loss = 0.0;
};

class Trainer {
 public:
  explicit Trainer(const Recipe& recipe);
  ~Trainer();

  // stop(step) is asked after each step; true saves a checkpoint and returns (SIGTERM path).
  TrainSummary run(bool resume, const std::function<bool(int64_t step)>& stop = nullptr);

  int64_t total_steps() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace shardlora::train
