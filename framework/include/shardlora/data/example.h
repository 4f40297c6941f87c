// Training examples: token ids with labels in Hugging Face's convention (labels[i] is the
// token at i, the loss shifts by one; kIgnoreIndex where no loss is taken), and batching:
// a length policy, per-batch padding, or packing several examples into one row with
// document ids and restarting positions so attention never crosses examples.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "shardlora/data/chat_template.h"
#include "shardlora/data/tokenizer.h"

namespace shardlora::data {

constexpr int64_t kIgnoreIndex = -100;

struct Example {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> labels;  // same length; kIgnoreIndex for prompt tokens

  int64_t trainable_tokens() const;
};

// Each segment tokenized on its own (as torchtune and axolotl do), prompt segments labelled
// kIgnoreIndex unless train_on_prompt. A tokenizer that adds bos gets it first unless the
// text already starts with it. Segments stop being tokenized once `max_tokens` are out
// (the result is then cut there, bos aside, as fit_to_length would cut the whole).
Example tokenize_segments(const Tokenizer& tokenizer, const std::vector<Segment>& segments, bool train_on_prompt = false,
                          size_t max_tokens = SIZE_MAX);

// Plain text: bos (when the tokenizer adds one), the text, eos; every token trained on.
Example tokenize_text(const Tokenizer& tokenizer, const std::string& text, size_t max_tokens = SIZE_MAX);

enum class OverLength { Truncate, Drop };

// Applies the policy to an example longer than max_seq_len: false when it is dropped.
bool fit_to_length(Example* example, int64_t max_seq_len, OverLength policy);

struct Batch {
  torch::Tensor input_ids;     // [rows, length] int64
  torch::Tensor labels;        // [rows, length] int64
  torch::Tensor position_ids;  // [rows, length] int64, restarting at 0 in every example
  torch::Tensor document_ids;  // [rows, length] int64; padding is its own document (-1)
  int64_t trainable_tokens = 0;
};

// One example per row, padded to the longest (pad id, label kIgnoreIndex).
Batch pad_batch(const std::vector<Example>& examples, int64_t pad_id);

// Greedy packing in order: an example goes into the current row if it fits, else starts a
// new row; examples are never split (longer ones must be fitted first). Rows are padded to
// max_seq_len.
Batch pack_batch(const std::vector<Example>& examples, int64_t max_seq_len, int64_t pad_id);

}  // namespace shardlora::data
