#include "shardlora/data/example.h"

#include <algorithm>

#include "shardlora/kernels/check.h"

namespace shardlora::data {
namespace {

// Rows of a batch being built, flattened later into tensors.
struct Rows {
  std::vector<std::vector<int64_t>> ids, labels, positions, documents;

  void start() {
    ids.emplace_back();
    labels.emplace_back();
    positions.emplace_back();
    documents.emplace_back();
  }
  void append(const Example& example, int64_t document) {
    ids.back().insert(ids.back().end(), example.input_ids.begin(), example.input_ids.end());
    labels.back().insert(labels.back().end(), example.labels.begin(), example.labels.end());
    for (size_t i = 0; i < example.input_ids.size(); ++i) {
      positions.back().push_back(static_cast<int64_t>(i));
      documents.back().push_back(document);
    }
  }
  Batch to_batch(int64_t length, int64_t pad_id) const {
    const auto rows = static_cast<int64_t>(ids.size());
    Batch batch;
    batch.input_ids = torch::full({rows, length}, pad_id, torch::kInt64);
    batch.labels = torch::full({rows, length}, kIgnoreIndex, torch::kInt64);
    batch.position_ids = torch::zeros({rows, length}, torch::kInt64);
    batch.document_ids = torch::full({rows, length}, int64_t{-1}, torch::kInt64);
    for (int64_t r = 0; r < rows; ++r) {
      const auto n = static_cast<int64_t>(ids[r].size());
      const auto copy = [&](const std::vector<int64_t>& values, torch::Tensor& into) {
        into[r].narrow(0, 0, n).copy_(torch::tensor(values, torch::kInt64));
      };
      if (n == 0) continue;
      copy(ids[r], batch.input_ids);
      copy(labels[r], batch.labels);
      copy(positions[r], batch.position_ids);
      copy(documents[r], batch.document_ids);
      // Padding positions continue from the row's end, so rotary angles stay in range.
      batch.position_ids[r].narrow(0, n, length - n).copy_(torch::arange(n, length, torch::kInt64));
      for (const int64_t label : labels[r]) batch.trainable_tokens += label != kIgnoreIndex;
    }
    return batch;
  }
};

}  // namespace

int64_t Example::trainable_tokens() const {
  return std::count_if(labels.begin(), labels.end(), [](int64_t label) { return label != kIgnoreIndex; });
}

Example tokenize_segments(const Tokenizer& tokenizer, const std::vector<Segment>& segments, bool train_on_prompt,
                          size_t max_tokens) {
  Example example;
  for (const Segment& segment : segments) {
    if (segment.text.empty()) continue;
    if (example.input_ids.size() >= max_tokens) break;
    const std::vector<int64_t> ids = max_tokens == SIZE_MAX ? tokenizer.encode(segment.text)
                                                            : tokenizer.encode_prefix(segment.text, max_tokens - example.input_ids.size());
    const bool trained = segment.trainable || train_on_prompt;
    for (const int64_t id : ids) {
      example.input_ids.push_back(id);
      example.labels.push_back(trained ? id : kIgnoreIndex);
    }
  }
  const auto& special = tokenizer.special();
  if (special.add_bos && (example.input_ids.empty() || example.input_ids.front() != *special.bos)) {
    example.input_ids.insert(example.input_ids.begin(), *special.bos);
    example.labels.insert(example.labels.begin(), kIgnoreIndex);
  }
  return example;
}

Example tokenize_text(const Tokenizer& tokenizer, const std::string& text, size_t max_tokens) {
  Example example = tokenize_segments(tokenizer, {{text, true}}, /*train_on_prompt=*/false, max_tokens);
  if (const auto eos = tokenizer.special().eos) {
    example.input_ids.push_back(*eos);
    example.labels.push_back(*eos);
  }
  return example;
}

bool fit_to_length(Example* example, int64_t max_seq_len, OverLength policy) {
  SHARDLORA_CHECK(max_seq_len > 0, "max_seq_len must be positive, found ", max_seq_len);
  if (static_cast<int64_t>(example->input_ids.size()) <= max_seq_len) return true;
  if (policy == OverLength::Drop) return false;
  example->input_ids.resize(static_cast<size_t>(max_seq_len));
  example->labels.resize(static_cast<size_t>(max_seq_len));
  return true;
}

Batch pad_batch(const std::vector<Example>& examples, int64_t pad_id) {
  SHARDLORA_CHECK(!examples.empty(), "pad_batch: no examples");
  Rows rows;
  size_t longest = 0;
  for (size_t i = 0; i < examples.size(); ++i) {
    rows.start();
    rows.append(examples[i], 0);
    longest = std::max(longest, examples[i].input_ids.size());
  }
  return rows.to_batch(static_cast<int64_t>(longest), pad_id);
}

Batch pack_batch(const std::vector<Example>& examples, int64_t max_seq_len, int64_t pad_id) {
  SHARDLORA_CHECK(!examples.empty(), "pack_batch: no examples");
  Rows rows;
  int64_t used = max_seq_len, document = 0;  // `used` full: the first example starts a row
  for (const Example& example : examples) {
    const auto length = static_cast<int64_t>(example.input_ids.size());
    SHARDLORA_CHECK(length <= max_seq_len, "pack_batch: an example of ", length, " tokens exceeds max_seq_len ", max_seq_len,
                    " (truncate or drop it first)");
    if (used + length > max_seq_len) {
      rows.start();
      used = 0;
    }
    rows.append(example, document++);
    used += length;
  }
  return rows.to_batch(max_seq_len, pad_id);
}

}  // namespace shardlora::data
