// Measures of a model on a dataset: the training loss (summed over target tokens), mean
// loss and perplexity over a dataset, and task accuracy by greedy generation.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "shardlora/data/data_loader.h"
#include "shardlora/data/dataset.h"
#include "shardlora/nn/fused_ops.h"
#include "shardlora/nn/llama.h"

namespace shardlora::train {

// The model's loss on a batch summed over its targets, and their count, both on the model's
// device (nothing waits for them): the target of position t is the label at t + 1, taken
// when it is not -100 and t + 1 lies in t's document (packing). The logits are computed in
// chunks and never held whole (nn::linear_cross_entropy).
nn::SummedLoss summed_loss(nn::LlamaModel& model, const data::Batch& batch);

// Where the batch has a target ([batch, length - 1], bool, on `device`): the label is not
// -100 and the token predicting it lies in the same packed document.
torch::Tensor target_mask(const data::Batch& batch, torch::Device device = torch::kCPU);

struct LossResult {
  double loss = 0;      // mean over target tokens
  int64_t tokens = 0;
  double perplexity() const;
};

// Every sample in `indices`, in order, unpacked, micro_batch_size rows at a time (samples
// that do not fit max_seq_len dropped as data.over_length says, malformed ones skipped as
// data.on_error says).
std::vector<data::Batch> eval_batches(const data::Dataset& dataset, const std::vector<int64_t>& indices,
                                      const data::Tokenizer& tokenizer, const data::LoaderOptions& options);

// Mean loss over `batches` in eval mode (no dropout; the training RNG is untouched); nullopt
// when no batch has a target. Runs at least `forward_passes` forwards: the extra ones on a
// one-token input whose result is dropped, so that ranks of a sharded model, whose forwards
// are collective, run as many as the rank with the most batches.
std::optional<LossResult> evaluate_loss(nn::LlamaModel& model, const std::vector<data::Batch>& batches, int64_t forward_passes = 0);

// Both of the above.
std::optional<LossResult> evaluate_loss(nn::LlamaModel& model, const data::Dataset& dataset, const std::vector<int64_t>& indices,
                                        const data::Tokenizer& tokenizer, const data::LoaderOptions& options);

struct AccuracySample {
  std::string prompt, expected, generated;
  bool correct;
};

struct AccuracyResult {
  int64_t correct = 0, total = 0;
  std::vector<AccuracySample> samples;  // the first few, for display
  double accuracy() const { return total ? static_cast<double>(correct) / static_cast<double>(total) : 0.0; }
};

// Exact-match accuracy on alpaca / chat data: each conversation up to its last assistant
// message is the prompt; greedy generation (stopping at the tokenizer's stop ids) must
// reproduce that message (surrounding whitespace ignored).
AccuracyResult evaluate_accuracy(nn::LlamaModel& model, const data::Dataset& dataset, const std::vector<int64_t>& indices,
                                 const data::Tokenizer& tokenizer, const data::ChatTemplate& chat_template,
                                 int64_t max_new_tokens, size_t samples_kept = 3);

}  // namespace shardlora::train
