#include "shardlora/train/evaluation.h"

#include <cmath>

#include "shardlora/data/example.h"
#include "shardlora/kernels/check.h"
#include "shardlora/nn/generation.h"
#include "shardlora/tensor/device_copy.h"

namespace shardlora::train {
namespace {

std::string trimmed(const std::string& text) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(" \t\r\n") - first + 1);
}

// Restores training mode (and the autograd state) when evaluation ends, also by an error.
class EvalMode {
 public:
  explicit EvalMode(nn::LlamaModel& model) : model_(model), was_training_(model->is_training()) { model_->eval(); }
  ~EvalMode() { model_->train(was_training_); }

 private:
  nn::LlamaModel& model_;
  bool was_training_;
  torch::NoGradGuard no_grad_;
};

}  // namespace

torch::Tensor target_mask(const data::Batch& batch, torch::Device device) {
  const int64_t length = batch.input_ids.size(1);
  const torch::Tensor labels = batch.labels.to(device), documents = batch.document_ids.to(device);
  const torch::Tensor same_document = documents.narrow(1, 1, length - 1).eq(documents.narrow(1, 0, length - 1));
  return labels.narrow(1, 1, length - 1).ne(data::kIgnoreIndex).logical_and(same_document);
}

nn::SummedLoss summed_loss(nn::LlamaModel& model, const data::Batch& batch) {
  const torch::Tensor hidden =
      model->hidden_states(batch.input_ids, {.position_ids = batch.position_ids, .document_ids = batch.document_ids});
  const int64_t length = batch.input_ids.size(1);
  data::Batch on_device = batch;  // what the mask and the targets read, copied without a host sync
  on_device.labels = to_device(batch.labels, hidden.device());
  on_device.document_ids = to_device(batch.document_ids, hidden.device());
  const torch::Tensor mask = target_mask(on_device, hidden.device());
  const torch::Tensor targets = on_device.labels.narrow(1, 1, length - 1).masked_fill(mask.logical_not(), data::kIgnoreIndex);
  const torch::Tensor predicting = hidden.narrow(1, 0, length - 1).reshape({-1, hidden.size(-1)});
  return nn::linear_cross_entropy(predicting, model->lm_head(), targets.reshape({-1}));
}

double LossResult::perplexity() const { return std::exp(loss); }

std::vector<data::Batch> eval_batches(const data::Dataset& dataset, const std::vector<int64_t>& indices,
                                      const data::Tokenizer& tokenizer, const data::LoaderOptions& options) {
  const int64_t pad_id = tokenizer.special().pad.value_or(tokenizer.special().eos.value_or(0));
  std::vector<data::Batch> batches;
  std::vector<data::Example> rows;
  const auto flush = [&] {
    if (rows.empty()) return;
    batches.push_back(data::pad_batch(rows, pad_id));
    rows.clear();
  };
  for (data::PreparedExample& prepared : data::prepare_examples(dataset, indices, tokenizer, options.prompt, options.threads)) {
    if (prepared.error) {
      if (options.skip_malformed) continue;
      throw Error(*prepared.error);
    }
    data::Example example = std::move(prepared.example);
    if (!data::fit_to_length(&example, options.max_seq_len, options.over_length)) continue;
    rows.push_back(std::move(example));
    if (static_cast<int64_t>(rows.size()) == options.micro_batch_size) flush();
  }
  flush();
  return batches;
}

std::optional<LossResult> evaluate_loss(nn::LlamaModel& model, const std::vector<data::Batch>& batches, int64_t forward_passes) {
  const EvalMode eval_mode(model);
  // Summed on the device, read once.
  torch::Tensor loss = torch::zeros({}, torch::TensorOptions(torch::kFloat64).device(model->device()));
  torch::Tensor counted = torch::zeros({}, loss.options().dtype(torch::kInt64));
  for (const data::Batch& batch : batches) {
    const nn::SummedLoss summed = summed_loss(model, batch);
    loss += summed.sum.to(torch::kFloat64);
    counted += summed.count;
  }
  const int64_t tokens = counted.item<int64_t>();
  for (auto pass = static_cast<int64_t>(batches.size()); pass < forward_passes; ++pass) {
    model->forward(torch::zeros({1, 1}, torch::kInt64));
  }
  if (tokens == 0) return std::nullopt;
  return LossResult{loss.item<double>() / static_cast<double>(tokens), tokens};
}

std::optional<LossResult> evaluate_loss(nn::LlamaModel& model, const data::Dataset& dataset, const std::vector<int64_t>& indices,
                                        const data::Tokenizer& tokenizer, const data::LoaderOptions& options) {
  return evaluate_loss(model, eval_batches(dataset, indices, tokenizer, options));
}

AccuracyResult evaluate_accuracy(nn::LlamaModel& model, const data::Dataset& dataset, const std::vector<int64_t>& indices,
                                 const data::Tokenizer& tokenizer, const data::ChatTemplate& chat_template,
                                 int64_t max_new_tokens, size_t samples_kept) {
  const EvalMode eval_mode(model);
  nn::GenerationOptions generation;
  generation.max_new_tokens = max_new_tokens;
  generation.eos_token_ids = tokenizer.special().stop_ids;
  AccuracyResult result;
  for (const int64_t index : indices) {
    std::vector<data::Message> messages = dataset.messages(index, chat_template);
    const auto last_answer = std::find_if(messages.rbegin(), messages.rend(), [](const data::Message& m) { return m.role == "assistant"; });
    SHARDLORA_CHECK(last_answer != messages.rend(), dataset.location(index), ": no assistant message to score against");
    const std::string expected = last_answer->content;
    messages.erase(std::prev(last_answer.base()), messages.end());
    std::vector<data::Segment> prompt_segments = data::render_generation_prompt(chat_template, messages);
    const std::vector<int64_t> prompt = data::tokenize_segments(tokenizer, prompt_segments).input_ids;
    const std::string generated = tokenizer.decode(nn::generate(model, prompt, generation), /*skip_special=*/true);
    const bool correct = trimmed(generated) == trimmed(expected);
    result.correct += correct;
    ++result.total;
    if (result.samples.size() < samples_kept) {
      std::string prompt_text;
      for (const auto& segment : prompt_segments) prompt_text += segment.text;
      result.samples.push_back({prompt_text, expected, generated, correct});
    }
  }
  return result;
}

}  // namespace shardlora::train
