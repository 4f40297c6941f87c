// Datasets from local files: JSONL (blank lines skipped), JSON arrays (nested brackets and
// escaped quotes inside strings), directories of .txt; every format with mapped field names;
// the cached index is used and invalidated by size and mtime; errors name file, line, key;
// the loader's batches, length policy counters and exact resume.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <atomic>
#include <numeric>
#include <random>
#include <set>

#include "shardlora/data/data_loader.h"
#include "shardlora/data/dataset.h"
#include "shardlora/kernels/check.h"
#include "shardlora/nn/random_model.h"
#include "shardlora/util/memory.h"
#include "shardlora/util/parallel_tasks.h"
#include "temp_dir.h"

using namespace shardlora;
using namespace shardlora::data;
namespace fs = std::filesystem;

namespace {

class Datasets : public shardlora::testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    nn::write_random_hf_model(path("model"), {});
    tokenizer_ = load_tokenizer(path("model"));
  }

  std::string write(const std::string& name, const std::string& content) {
    std::ofstream(path(name), std::ios::binary) << content;
    return path(name);
  }

  std::string text_of(const Example& example) const { return tokenizer_->decode(example.input_ids); }
  std::string trained_text(const Example& example) const {
    std::vector<int64_t> trained;
    for (const int64_t label : example.labels) {
      if (label != kIgnoreIndex) trained.push_back(label);
    }
    return tokenizer_->decode(trained);
  }

  std::string error_of(const Dataset& dataset, int64_t index, const PromptOptions& prompt) {
    try {
      dataset.example(index, *tokenizer_, prompt);
    } catch (const Error& error) {
      return error.what();
    }
    return "no error";
  }

  std::unique_ptr<Tokenizer> tokenizer_;
  ChatTemplate chatml_ = builtin_chat_template("chatml");
};

}  // namespace

TEST_F(Datasets, JsonlChatRecordsSkipBlankLines) {
  const std::string file = write("chat.jsonl",
                                 R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]})"
                                 "\n\n   \n"
                                 R"({"messages": [{"role": "user", "content": "2+2"}, {"role": "assistant", "content": "4"}]})"
                                 "\r\n");
  const Dataset dataset({file, DatasetFormat::Chat});
  ASSERT_EQ(dataset.size(), 2);
  EXPECT_EQ(dataset.location(1), file + ":4");
  const Example example = dataset.example(1, *tokenizer_, {&chatml_});
  EXPECT_EQ(text_of(example), "<|im_start|>user\n2+2<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n");
  EXPECT_EQ(trained_text(example), "4<|im_end|>\n");
}

TEST_F(Datasets, JsonArrayElementsWithNestedBracketsAndEscapes) {
  const std::string file = write("data.json", R"([
    {"instruction": "Say ] and [", "input": "", "output": "{ok}"},
    {"instruction": "Quote", "input": "a \"q\" ,", "output": "\\done", "extra": [1, [2, {"x": "]"}]]}
  ])");
  const Dataset dataset({file, DatasetFormat::Alpaca});
  ASSERT_EQ(dataset.size(), 2);
  EXPECT_EQ(dataset.location(1), file + "[1] (line 3)");
  const ChatTemplate alpaca = builtin_chat_template("alpaca");
  EXPECT_EQ(trained_text(dataset.example(0, *tokenizer_, {&alpaca})), "{ok}</s>");
  const Example second = dataset.example(1, *tokenizer_, {&alpaca});
  EXPECT_NE(text_of(second).find("### Instruction:\nQuote\n\n### Input:\na \"q\" ,\n\n### Response:\n\\done</s>"), std::string::npos)
      << text_of(second);
  // Without input, no input section; with another template, a blank line between them.
  EXPECT_EQ(text_of(dataset.example(0, *tokenizer_, {&alpaca})).find("### Input"), std::string::npos);
  EXPECT_NE(text_of(dataset.example(1, *tokenizer_, {&chatml_})).find("Quote\n\na \"q\" ,<|im_end|>"), std::string::npos);
}

TEST_F(Datasets, TextTokenizedAndTxtDirectoriesWithMappedFields) {
  const std::string text_file = write("text.jsonl", R"({"body": "hello"})" "\n");
  DatasetOptions options{text_file, DatasetFormat::Text};
  options.fields.text = "body";
  const Example text = Dataset(options).example(0, *tokenizer_, {});
  EXPECT_EQ(text.input_ids, (std::vector<int64_t>{'h', 'e', 'l', 'l', 'o', nn::kByteVocab + 1}));
  EXPECT_EQ(text.labels, text.input_ids);

  const std::string tokenized_file = write("ids.jsonl", R"({"input_ids": [1, 2, 3], "labels": [-100, 2, 3]})" "\n");
  const Example tokenized = Dataset({tokenized_file, DatasetFormat::Tokenized}).example(0, *tokenizer_, {});
  EXPECT_EQ(tokenized.input_ids, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(tokenized.labels, (std::vector<int64_t>{kIgnoreIndex, 2, 3}));

  fs::create_directories(path("texts"));
  write("texts/b.txt", "second");
  write("texts/a.txt", "first");
  write("texts/notes.md", "ignored");
  const Dataset texts({path("texts"), DatasetFormat::Text});
  ASSERT_EQ(texts.size(), 2);
  EXPECT_EQ(texts.location(0), path("texts/a.txt"));
  EXPECT_EQ(text_of(texts.example(1, *tokenizer_, {})), "second</s>");

  write("texts/c.txt", std::string("\x7f" "ELF\0\1\0", 7));
  const Dataset binary({path("texts"), DatasetFormat::Text});
  try {
    binary.example(2, *tokenizer_, {});
    ADD_FAILURE() << "a binary .txt file was read as text";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("c.txt: not UTF-8 text"), std::string::npos) << error.what();
  }
}

TEST_F(Datasets, IndexIsCachedAndInvalidatedBySizeAndMtime) {
  const std::string file = write("t.jsonl", R"({"text": "aa"})" "\n" R"({"text": "bbbb"})" "\n");
  fs::create_directories(path("cache"));
  DatasetOptions options{file, DatasetFormat::Text};
  options.cache_dir = path("cache");
  EXPECT_EQ(Dataset(options).record(1), R"({"text": "bbbb"})");
  const std::string index = path("cache/t.jsonl.shardlora-index");
  ASSERT_TRUE(fs::exists(index));
  {
    // Point the cached span of record 1 elsewhere: a dataset that reads it proves the cache is used.
    std::fstream patch(index, std::ios::in | std::ios::out | std::ios::binary);
    patch.seekp(32 + 24);  // header, then record 1's begin
    const uint64_t begin = 0;
    patch.write(reinterpret_cast<const char*>(&begin), 8);
  }
  EXPECT_EQ(Dataset(options).record(1).substr(0, 8), R"({"text":)") << "the cached index was not used";
  EXPECT_NE(Dataset(options).record(1), R"({"text": "bbbb"})");
  // Appending a record changes size and mtime: the index is rebuilt.
  std::ofstream(file, std::ios::app) << R"({"text": "c"})" "\n";
  const Dataset rebuilt(options);
  EXPECT_EQ(rebuilt.size(), 3);
  EXPECT_EQ(rebuilt.record(1), R"({"text": "bbbb"})");
}

TEST_F(Datasets, BadRecordsNameFileLineAndKey) {
  const std::string file = write("bad.jsonl",
                                 R"({"messages": [{"role": "user", "content": "Hi"}]})" "\n"
                                 R"({"messages": [{"role": "user"}]})" "\n"
                                 R"({"messages": "nope"})" "\n"
                                 R"({not json)" "\n"
                                 R"({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]})" "\n");
  const Dataset dataset({file, DatasetFormat::Chat});
  EXPECT_NE(error_of(dataset, 0, {&chatml_}).find(file + ":1: the conversation has no assistant message"), std::string::npos)
      << error_of(dataset, 0, {&chatml_});
  EXPECT_NE(error_of(dataset, 1, {&chatml_}).find(file + ":2: messages[0]: key 'content' is missing"), std::string::npos);
  EXPECT_NE(error_of(dataset, 2, {&chatml_}).find(file + ":3: key 'messages' must be a non-empty list"), std::string::npos);
  EXPECT_NE(error_of(dataset, 3, {&chatml_}).find(file + ":4: invalid JSON"), std::string::npos);
  EXPECT_NE(error_of(dataset, 4, {&chatml_}).find(file + ":5: message 0: role 'robot' has no format"), std::string::npos)
      << error_of(dataset, 4, {&chatml_});
  EXPECT_NE(error_of(dataset, 0, {}).find("needs a chat template"), std::string::npos);
  const std::string ids = write("ids.jsonl", R"({"input_ids": [1, 99999]})" "\n");
  EXPECT_NE(error_of(Dataset({ids, DatasetFormat::Tokenized}), 0, {}).find("holds 99999, not a token id"), std::string::npos);
  EXPECT_THROW(Dataset({write("x.csv", "a,b"), DatasetFormat::Text}), Error);
  EXPECT_THROW(Dataset({write("open.json", R"([{"a": 1})"), DatasetFormat::Text}), Error);
  EXPECT_THROW(Dataset({write("empty.jsonl", "\n\n"), DatasetFormat::Text}), Error);
}

// A 30 MB record cut to a 64-token sequence is tokenized only as far as it is kept: it
// used to cost ~70x its size in memory (3.6 GB for a 54 MB chat record).
TEST_F(Datasets, AHugeRecordCostsMemoryForWhatIsKept) {
  const std::string sentence = "lorem ipsum dolor sit amet ";
  std::string body;
  while (body.size() < (30u << 20)) body += sentence;
  const std::string file = write("huge.jsonl", nlohmann::json({{"text", body}}).dump() + "\n");
  body.clear();
  body.shrink_to_fit();
  const Dataset dataset({file, DatasetFormat::Text});
  const int64_t before = peak_rss_bytes();
  const Example kept = dataset.example(0, *tokenizer_, {.max_tokens = 65});
  EXPECT_EQ(kept.input_ids.size(), 66u) << "65 tokens of text, then eos";
  EXPECT_EQ(text_of(kept), (sentence + sentence + sentence).substr(0, 65) + "</s>") << "the head of the text, each byte a token";
  EXPECT_LT(peak_rss_bytes() - before, int64_t{400} << 20) << "the record, its JSON and the kept ids, not a tokenization of all of it";
}

TEST(DatasetSplit, DeterministicDisjointAndNearTheFraction) {
  std::vector<int64_t> train, validation, train2, validation2;
  split_indices(1000, 0.2, 7, &train, &validation);
  split_indices(1000, 0.2, 7, &train2, &validation2);
  EXPECT_EQ(validation, validation2);
  EXPECT_EQ(train.size() + validation.size(), 1000u);
  std::set<int64_t> all(train.begin(), train.end());
  all.insert(validation.begin(), validation.end());
  EXPECT_EQ(all.size(), 1000u);
  EXPECT_GT(validation.size(), 150u);
  EXPECT_LT(validation.size(), 250u);
  split_indices(1000, 0.2, 8, &train2, &validation2);
  EXPECT_NE(validation, validation2) << "the seed matters";
}

TEST_F(Datasets, LoaderResumesToTheIdenticalBatchesAndCountsTheLengthPolicy) {
  std::string lines;
  for (int i = 0; i < 40; ++i) lines += R"({"text": ")" + std::string(1 + (i * 7) % 13, static_cast<char>('a' + i % 26)) + "\"}\n";
  const Dataset dataset({write("texts.jsonl", lines), DatasetFormat::Text});
  std::vector<int64_t> all(40);
  for (int64_t i = 0; i < 40; ++i) all[i] = i;
  for (const bool packing : {false, true}) {
    LoaderOptions options;
    options.micro_batch_size = 2;
    options.max_seq_len = 12;
    options.packing = packing;
    options.over_length = OverLength::Drop;
    DataLoader straight(dataset, *tokenizer_, all, 2, 1, 3, options);
    std::vector<Batch> expected;
    for (int i = 0; i < 30; ++i) expected.push_back(straight.next());  // several epochs of rank 1's 20 samples
    DataLoader first(dataset, *tokenizer_, all, 2, 1, 3, options);
    for (int i = 0; i < 11; ++i) first.next();
    DataLoader second(dataset, *tokenizer_, all, 2, 1, 3, options);
    second.restore(first.position());
    for (int i = 11; i < 30; ++i) {
      const Batch batch = second.next();
      ASSERT_TRUE(torch::equal(batch.input_ids, expected[i].input_ids)) << "batch " << i << ", packing " << packing;
      ASSERT_TRUE(torch::equal(batch.document_ids, expected[i].document_ids)) << "batch " << i;
    }
    EXPECT_EQ(second.stats().dropped, straight.stats().dropped);
    // Texts of 12-13 characters plus eos exceed 12 tokens: dropped, and counted.
    EXPECT_GT(straight.stats().dropped, 0);
    EXPECT_EQ(straight.stats().truncated, 0);
    for (const Batch& batch : expected) {
      EXPECT_EQ(batch.input_ids.size(0), 2) << "micro_batch_size rows";
      EXPECT_LE(batch.input_ids.size(1), 12);
    }
  }
  LoaderOptions truncating;
  truncating.max_seq_len = 12;
  DataLoader loader(dataset, *tokenizer_, all, 1, 0, 3, truncating);
  for (int i = 0; i < 40; ++i) loader.next();
  EXPECT_GT(loader.stats().truncated, 0);
  EXPECT_EQ(loader.stats().dropped, 0);
  EXPECT_EQ(loader.stats().examples, 40);
}

TEST_F(Datasets, MalformedRecordsFailOrAreSkippedAndCounted) {
  const Dataset dataset({write("mixed.jsonl", "{\"text\": \"good\"}\n{\"txt\": \"wrong key\"}\n{\"text\": \"fine\"}\n{broken\n"),
                         DatasetFormat::Text});
  const std::vector<int64_t> all = {0, 1, 2, 3};
  LoaderOptions options;
  options.max_seq_len = 16;
  DataLoader strict(dataset, *tokenizer_, all, 1, 0, 1, options);
  try {
    for (int i = 0; i < 4; ++i) strict.next();
    FAIL() << "a malformed record must stop a strict loader";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("mixed.jsonl:"), std::string::npos) << error.what();
  }
  options.skip_malformed = true;
  DataLoader lenient(dataset, *tokenizer_, all, 1, 0, 1, options);
  std::multiset<std::string> texts;
  for (int i = 0; i < 4; ++i) {
    const torch::Tensor ids = lenient.next().input_ids[0].contiguous();
    texts.insert(tokenizer_->decode({ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel()}, /*skip_special=*/true));
  }
  EXPECT_EQ(texts, (std::multiset<std::string>{"good", "good", "fine", "fine"})) << "two epochs of the two good records";
  // The first epoch has been read whole: both bad records skipped there, perhaps again in the second.
  const int64_t malformed = lenient.stats().malformed;
  EXPECT_GE(malformed, 2);
  EXPECT_LE(malformed, 4);
  EXPECT_EQ(lenient.stats().examples, 4);
  EXPECT_NE(describe(lenient.stats()).find(std::to_string(malformed) + " malformed skipped"), std::string::npos);
}

TEST(ParallelTasks, EveryTaskRunsOnceAndTheFirstErrorIsRethrown) {
  std::vector<std::atomic<int>> runs(1000);
  run_parallel_tasks(1000, 3, [&](int64_t i) { ++runs[static_cast<size_t>(i)]; });
  for (size_t i = 0; i < runs.size(); ++i) ASSERT_EQ(runs[i].load(), 1) << "task " << i;
  for (const int threads : {1, 3}) {
    std::atomic<int> started{0};
    const auto failing = [&](int64_t i) {
      ++started;
      if (i == 10) throw Error("task 10 failed");
    };
    EXPECT_THROW(run_parallel_tasks(1000, threads, failing), Error) << threads << " threads";
    if (threads == 1) EXPECT_EQ(started.load(), 11) << "tasks after a failure are skipped";
  }
  run_parallel_tasks(0, 3, [](int64_t) { FAIL() << "no tasks"; });
}

// A .jsonl file is indexed in one chunk per thread (>= 4 MiB each). The cuts fall where this
// test puts a newline just before, blanks around, or the middle of a record; every thread
// count must find exactly the lines a plain split finds.
TEST_F(Datasets, JsonlIndexedInChunksFindsTheLinesOfAPlainSplit) {
  constexpr size_t kSize = (17 << 20) + 123;
  std::mt19937 rng(9);
  std::string content;
  while (content.size() < kSize) {
    const int kind = static_cast<int>(rng() % 20);
    if (kind == 0) content += "\n";                 // a blank line
    else if (kind == 1) content += "   \t \r\n";     // a line of blanks
    else content += "  {\"text\": \"" + std::string(1 + rng() % 300, static_cast<char>('a' + rng() % 26)) + "\"}" + (kind == 2 ? "\r\n" : "\n");
  }
  content.resize(kSize);
  content.back() = '}';  // the last line has no newline
  const auto put = [&](size_t at, const std::string& text) { content.replace(at, text.size(), text); };
  put(kSize / 3 - 1, "\n");           // 3 chunks: the cut right after a newline
  put(2 * kSize / 3 - 3, "  \r\n  ");  // blanks on both sides of the cut
  put(kSize / 4 - 1, "\n\n");         // 4 chunks: an empty line on the cut
  put(kSize / 2 - 1, "xy");           // 2 chunks: the cut inside a record
  const std::string file = write("big.jsonl", content);

  std::vector<std::pair<std::string, uint64_t>> expected;  // record, 1-based line
  uint64_t line = 1;
  for (size_t begin = 0; begin <= content.size(); ++line) {
    size_t end = content.find('\n', begin);
    if (end == std::string::npos) end = content.size();
    const size_t first = content.find_first_not_of(" \t\r", begin);
    if (first < end) {
      const size_t last = content.find_last_not_of(" \t\r", end - 1);
      expected.emplace_back(content.substr(first, last - first + 1), line);
    }
    begin = end + 1;
  }
  for (const int threads : {1, 2, 3, 4}) {
    DatasetOptions options{file, DatasetFormat::Text};
    options.cache_dir = path("cache" + std::to_string(threads));  // each count indexes afresh
    fs::create_directories(options.cache_dir);
    options.threads = threads;
    const Dataset dataset(options);
    ASSERT_EQ(dataset.size(), static_cast<int64_t>(expected.size())) << threads << " threads";
    for (size_t i = 0; i < expected.size(); ++i) {
      ASSERT_EQ(dataset.record(static_cast<int64_t>(i)), expected[i].first) << threads << " threads, record " << i;
      ASSERT_EQ(dataset.location(static_cast<int64_t>(i)), file + ":" + std::to_string(expected[i].second)) << threads << " threads";
    }
  }
}

// Tokenizing ahead on threads changes nothing that comes out: batches, counters, the error a
// strict loader stops with and where, and resuming from another loader's position.
TEST_F(Datasets, LoaderTokenizingAheadOnThreadsYieldsWhatOneThreadDoes) {
  std::mt19937 rng(4);
  std::string lines;
  for (int i = 0; i < 150; ++i) {
    if (i % 37 == 5) lines += "{\"txt\": \"wrong key\"}\n";
    else lines += R"({"text": ")" + std::string(1 + rng() % 20, static_cast<char>('a' + rng() % 26)) + "\"}\n";
  }
  const Dataset dataset({write("mixed.jsonl", lines), DatasetFormat::Text});
  std::vector<int64_t> all(150);
  std::iota(all.begin(), all.end(), int64_t{0});
  const auto batches_equal = [](const Batch& a, const Batch& b) {
    return torch::equal(a.input_ids, b.input_ids) && torch::equal(a.labels, b.labels) &&
           torch::equal(a.position_ids, b.position_ids) && torch::equal(a.document_ids, b.document_ids);
  };
  for (const bool packing : {false, true}) {
    LoaderOptions options;
    options.micro_batch_size = 3;
    options.max_seq_len = 16;
    options.packing = packing;
    options.over_length = OverLength::Drop;
    options.skip_malformed = true;
    options.threads = 1;
    DataLoader one(dataset, *tokenizer_, all, 2, 0, 7, options);
    options.threads = 3;
    DataLoader three(dataset, *tokenizer_, all, 2, 0, 7, options);
    DataLoader resumed(dataset, *tokenizer_, all, 2, 0, 7, options);
    for (int i = 0; i < 80; ++i) {  // several epochs of rank 0's 75 samples
      if (i == 33) resumed.restore(one.position());
      const Batch expected = one.next();
      ASSERT_TRUE(batches_equal(three.next(), expected)) << "batch " << i << ", packing " << packing;
      if (i >= 33) ASSERT_TRUE(batches_equal(resumed.next(), expected)) << "resumed, batch " << i;
      ASSERT_EQ(describe(three.stats()), describe(one.stats())) << "batch " << i;
    }
    EXPECT_GT(one.stats().malformed, 0);
    EXPECT_GT(one.stats().dropped, 0);

    options.skip_malformed = false;
    const auto failing_batch = [&](int threads) {
      options.threads = threads;
      DataLoader strict(dataset, *tokenizer_, all, 2, 0, 7, options);
      for (int i = 0; i < 80; ++i) {
        try {
          strict.next();
        } catch (const Error& error) {
          return std::to_string(i) + ": " + error.what();
        }
      }
      return std::string("no error");
    };
    const std::string alone = failing_batch(1);
    EXPECT_NE(alone.find("mixed.jsonl:"), std::string::npos) << alone;
    EXPECT_EQ(failing_batch(3), alone);
  }
}
