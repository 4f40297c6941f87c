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
// log interval and per evaluation), checkpoint-NNNNNN/ directories (the adapter in PEFT
// format, optimizer.safetensors, rng.safetensors and trainer_state.json: step, data
// position) and, once training completes, adapter/ (the final adapter, PEFT format). A
// checkpoint is assembled beside its place, synced and renamed in (io::StagingDirectory);
// only then are the oldest beyond training.keep_last removed (renamed out of the way first),
// so a crash or a full disk at any moment leaves only complete checkpoints. At start, what
// killed writers left (*.partial-PID, *.old-PID) is removed. StartMode::Resume continues
// from the newest checkpoint; on the CPU the resumed loss sequence equals the uninterrupted
// run's bit for bit.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "shardlora/data/chat_template.h"
#include "shardlora/data/tokenizer.h"
#include "shardlora/dist/communicator.h"
#include "shardlora/nn/llama.h"
#include "shardlora/train/evaluation.h"
#include "shardlora/train/recipe.h"

namespace shardlora::train {

struct TrainSummary {
  int64_t steps = 0;         // optimizer steps completed in the run directory
  int64_t steps_run = 0;     // of which by this call (0: a resumed run that was complete)
  bool stopped_early = false;
  double last_loss = 0.0;    // of the last step this call ran
  data::LoaderStats data;    // examples read, truncated, dropped, malformed skipped
};

// What the progress display needs after each optimizer step.
struct StepProgress {
  int64_t step = 0, total_steps = 0;
  double loss = 0, lr = 0, grad_norm = 0;
  double tokens_per_second = 0;  // input tokens (padding excluded) since this run started
  double elapsed_s = 0, eta_s = 0;
  int64_t peak_rss_bytes = 0;
  bool logged = false;  // a log interval: this step was written to metrics.jsonl
};

struct TrainHooks {
  // Asked once per step on every rank with the number of the step being taken (before its
  // update); true on any rank stops every rank
  // after that step with a checkpoint (the SIGTERM path).
  std::function<bool(int64_t step)> stop;
  std::function<void(const StepProgress&)> on_step;               // rank 0 only
  std::function<void(int64_t step, const LossResult&)> on_eval;   // rank 0 only
};

// Fresh refuses a run directory that holds checkpoints or a final adapter/ (never overwrite
// a run by accident); Overwrite removes them first; Resume continues from the newest. Every
// mode is refused while another live process holds the directory (io::RunDirectoryLock,
// taken by rank 0 when the Trainer is built and held for its lifetime).
enum class StartMode { Fresh, Resume, Overwrite };

// The complete checkpoint-NNNNNN directories of a run, oldest first (none when it does not exist).
std::vector<std::filesystem::path> checkpoints(const std::string& run_dir);

// The error run() would give for `run_dir` and `mode` (another live run holds it, nothing to
// resume, a run in the way), for callers that want it before any other work.
void check_run_directory(const std::string& run_dir, StartMode mode);

class Trainer {
 public:
  // Errors name the recipe key when model.path, data.train or data.val does not exist.
  // With a communicator of more than one rank, each rank trains on its shard of the data and
  // adapter gradients are summed over ranks (dist::GradientBuckets) before the update, so N
  // ranks with micro-batch B take the step one rank takes with micro-batch N*B. Rank 0 alone
  // writes metrics, checkpoints (with every rank's data position) and the adapter; output.dir
  // must be one directory all ranks see (a shared filesystem across nodes).
  // A checkpoint written at one world size resumes at another: the data then continues from
  // the first sample every old rank had passed.
  // The model trains on `device` (cluster::rank_device resolves training.device for a rank);
  // the communicator's collectives take tensors there.
  explicit Trainer(const Recipe& recipe, dist::Communicator* comm = nullptr, torch::Device device = torch::kCPU);
  ~Trainer();

  TrainSummary run(StartMode mode, const TrainHooks& hooks = {});

  int64_t total_steps() const;
  // For measurements around training (the demo's accuracy before and after).
  nn::LlamaModel& model();
  const data::Tokenizer& tokenizer() const;
  const data::ChatTemplate& chat_template() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace shardlora::train
