// Datasets from local files, read sample by sample, never whole:
//   *.jsonl      one JSON object per line (blank lines skipped)
//   *.json       a JSON array of objects
//   a directory  every *.txt file (sorted by name) is one raw-text sample
// The first pass records where every sample starts and ends (a .jsonl file in chunks over
// the rank's threads); the index is cached (in `cache_dir`, or beside the data) and rebuilt
// when the file's size or mtime changes.
// Records become examples by format, with the field names mapped by the recipe:
//   alpaca     instruction / input / output   (the template's user turn: instruction, then input)
//   chat       messages: [{role, content}]
//   text       text                           (every token trained on)
//   tokenized  input_ids, optional labels
// Errors name the file, the line (or array element) and the key.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "shardlora/data/chat_template.h"
#include "shardlora/data/example.h"
#include "shardlora/data/tokenizer.h"

namespace shardlora::data {

enum class DatasetFormat { Alpaca, Chat, Text, Tokenized };

DatasetFormat dataset_format_from_name(const std::string& name);  // alpaca, chat, text, tokenized

struct FieldMap {
  std::string instruction = "instruction", input = "input", output = "output";
  std::string messages = "messages", role = "role", content = "content";
  std::string text = "text";
  std::string input_ids = "input_ids", labels = "labels";
};

struct DatasetOptions {
  std::string path;
  DatasetFormat format = DatasetFormat::Chat;
  FieldMap fields;
  std::string cache_dir;  // empty: beside the data
  int threads = 0;        // indexing a .jsonl file: 0 = the rank's libtorch thread count
};

struct PromptOptions {
  const ChatTemplate* chat_template = nullptr;  // alpaca and chat formats
  bool train_on_prompt = false;
  // Tokens past this many are never produced (the loader asks for max_seq_len + 1: enough
  // to truncate or drop as if the whole record had been tokenized).
  size_t max_tokens = SIZE_MAX;
};

class Dataset {
 public:
  explicit Dataset(DatasetOptions options);
  ~Dataset();
  Dataset(Dataset&&) noexcept;
  Dataset& operator=(Dataset&&) noexcept;

  int64_t size() const;
  // Where sample i comes from, for messages: "data.jsonl:12" (1-based line), "data.json[3]",
  // "texts/b.txt".
  std::string location(int64_t index) const;
  // The raw bytes of sample i (a JSON document, or the text of a .txt file).
  std::string record(int64_t index) const;
  Example example(int64_t index, const Tokenizer& tokenizer, const PromptOptions& prompt) const;
  // The conversation of sample i (alpaca and chat formats): what `example` renders, and what
  // task accuracy prompts with (every message before the last assistant one).
  std::vector<Message> messages(int64_t index, const ChatTemplate& chat_template) const;

 private:
  nlohmann::ordered_json parsed_record(int64_t index) const;
  std::vector<Message> conversation(const nlohmann::ordered_json& record, const std::string& where, const ChatTemplate& chat_template) const;

  struct Source;
  DatasetOptions options_;
  std::unique_ptr<Source> source_;
};

// A sample's example, or why it has none (the message example() would have thrown).
struct PreparedExample {
  Example example;
  std::optional<std::string> error;  // set when there is no example
};

// example() of each of `indices`, in that order, tokenized on `threads` threads (0: the
// rank's libtorch thread count). Only Error is caught per sample; anything else propagates.
std::vector<PreparedExample> prepare_examples(const Dataset& dataset, const std::vector<int64_t>& indices, const Tokenizer& tokenizer,
                                              const PromptOptions& prompt, int threads);

// Deterministic train / validation split of `count` samples: each index goes to validation
// with probability `fraction`, decided by a hash of (seed, index), so the split does not
// depend on the order samples are read.
void split_indices(int64_t count, double fraction, uint64_t seed, std::vector<int64_t>* train, std::vector<int64_t>* validation);

}  // namespace shardlora::data
