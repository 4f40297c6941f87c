// Preparing a dataset on the rank's threads against one thread, in one run: indexing a
// .jsonl file (no cached index; the file itself is in the page cache) and tokenizing one
// epoch through the loader with packing, as training does at start to count its steps and
// again while it trains. The batches of every thread count must hash alike (exit 1 if not)
// before any figure is printed.
//
//   bench_dataset --tokenizer DIR [--text FILE] [--records 20000] [--threads N] [--reps 3]
//
// Records are chat conversations (chatml template) whose turns are slices of --text, or of
// generated words without it. When the tokenizer directory ships a chat template, one more
// single-thread epoch renders the records with it (data.template: auto: the whole Jinja
// render and the incremental renders that find each answer) against the built-in chatml.
#include <omp.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "shardlora/data/data_loader.h"
#include "shardlora/data/dataset.h"
#include "read_file.h"

using namespace shardlora;
namespace fs = std::filesystem;

namespace {

// Words of letters with some digits and punctuation, when no text is given.
std::string generated_words(std::mt19937_64& rng, size_t bytes) {
  static const char* const kSyllables[] = {"ka", "lo", "mer", "tin", "sa", "qua", "dre", "pol", "vi", "ne", "st", "or"};
  std::string text;
  while (text.size() < bytes) {
    const int syllables = 1 + static_cast<int>(rng() % 4);
    for (int s = 0; s < syllables; ++s) text += kSyllables[rng() % 12];
    const uint64_t after = rng() % 20;
    text += after == 0 ? ", " : after == 1 ? ". " : after == 2 ? " " + std::to_string(rng() % 5000) + " " : " ";
  }
  return text;
}

std::string slice(const std::string& source, std::mt19937_64& rng, size_t bytes) {
  if (source.empty()) return generated_words(rng, bytes);
  bytes = std::min(bytes, source.size());
  size_t at = rng() % (source.size() - bytes + 1);
  while (at > 0 && (static_cast<unsigned char>(source[at]) & 0xc0) == 0x80) --at;  // a character's first byte
  size_t end = std::min(source.size(), at + bytes);
  while (end < source.size() && (static_cast<unsigned char>(source[end]) & 0xc0) == 0x80) ++end;
  return source.substr(at, end - at);
}

std::string write_chat_dataset(const std::string& path, const std::string& source, int64_t records) {
  std::mt19937_64 rng(17);
  std::ofstream out(path, std::ios::binary);
  for (int64_t r = 0; r < records; ++r) {
    nlohmann::json messages = nlohmann::json::array();
    if (rng() % 2) messages.push_back({{"role", "system"}, {"content", slice(source, rng, 50 + rng() % 200)}});
    for (uint64_t turn = 0, turns = 1 + rng() % 3; turn < turns; ++turn) {
      messages.push_back({{"role", "user"}, {"content", slice(source, rng, 100 + rng() % 600)}});
      messages.push_back({{"role", "assistant"}, {"content", slice(source, rng, 200 + rng() % 1500)}});
    }
    out << nlohmann::json{{"messages", messages}}.dump() << '\n';
  }
  return path;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

struct EpochPass {
  double seconds = 0;
  int64_t tokens = 0, batches = 0;
  uint64_t hash = 1469598103934665603ull;
};

// One epoch of packed batches, as the trainer's counting pass draws them.
EpochPass epoch_pass(const data::Dataset& dataset, const data::Tokenizer& tokenizer, const data::ChatTemplate& chat_template,
                     int threads) {
  std::vector<int64_t> all(static_cast<size_t>(dataset.size()));
  std::iota(all.begin(), all.end(), int64_t{0});
  data::LoaderOptions options;
  options.max_seq_len = 2048;
  options.packing = true;
  options.prompt = {&chat_template, false, 2049};
  options.threads = threads;
  EpochPass pass;
  const auto start = std::chrono::steady_clock::now();
  data::DataLoader loader(dataset, tokenizer, all, 1, 0, 5, options);
  while (loader.epoch() == 0) {
    const data::Batch batch = loader.next();
    const torch::Tensor ids = batch.input_ids.contiguous(), labels = batch.labels.contiguous();
    for (const torch::Tensor& t : {ids, labels}) {
      const auto* p = t.data_ptr<int64_t>();
      for (int64_t i = 0; i < t.numel(); ++i) pass.hash = (pass.hash ^ static_cast<uint64_t>(p[i])) * 1099511628211ull;
    }
    pass.tokens += (batch.document_ids >= 0).sum().item<int64_t>();  // padding aside
    ++pass.batches;
  }
  pass.seconds = seconds_since(start);
  return pass;
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer_dir, text_file;
  int64_t records = 20000;
  int threads = static_cast<int>(std::thread::hardware_concurrency()), reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--tokenizer") tokenizer_dir = value;
    else if (flag == "--text") text_file = value;
    else if (flag == "--records") records = std::stoll(value);
    else if (flag == "--threads") threads = std::stoi(value);
    else if (flag == "--reps") reps = std::stoi(value);
  }
  if (tokenizer_dir.empty()) {
    std::fprintf(stderr, "usage: %s --tokenizer DIR [--text FILE] [--records N] [--threads N] [--reps N]\n", argv[0]);
    return 2;
  }
  at::set_num_threads(1);  // the loader's own threads are the variable
  omp_set_num_threads(1);
  const fs::path dir = fs::temp_directory_path() / ("shardlora_bench_dataset_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string file = write_chat_dataset((dir / "chat.jsonl").string(), text_file.empty() ? "" : read_file(text_file), records);
  const auto tokenizer = data::load_tokenizer(tokenizer_dir);
  const data::ChatTemplate chat_template = data::builtin_chat_template("chatml");
  std::printf("%s: %lld chat records, %.1f MiB, tokenizer %s, %s\n", file.c_str(), static_cast<long long>(records),
              static_cast<double>(fs::file_size(file)) / (1 << 20), tokenizer_dir.c_str(),
              text_file.empty() ? "generated words" : ("turns cut from " + text_file).c_str());

  const auto best_index_seconds = [&](int index_threads) {
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
      data::DatasetOptions options{file, data::DatasetFormat::Chat};
      options.cache_dir = (dir / ("cache" + std::to_string(r) + "_" + std::to_string(index_threads))).string();
      fs::create_directories(options.cache_dir);
      options.threads = index_threads;
      const auto start = std::chrono::steady_clock::now();
      const data::Dataset dataset(options);
      best = std::min(best, seconds_since(start));
      if (dataset.size() != records) {
        std::fprintf(stderr, "FAILED: %d threads indexed %lld records, not %lld\n", index_threads,
                     static_cast<long long>(dataset.size()), static_cast<long long>(records));
        std::exit(1);
      }
    }
    return best;
  };
  const double index_one = best_index_seconds(1), index_many = best_index_seconds(threads);
  const double mib = static_cast<double>(fs::file_size(file)) / (1 << 20);
  std::printf("index .jsonl      1 thread %8.1f MiB/s   %d threads %8.1f MiB/s   ratio %.2fx\n", mib / index_one, threads,
              mib / index_many, index_one / index_many);

  const data::Dataset dataset({file, data::DatasetFormat::Chat, {}, dir.string()});
  const EpochPass one = epoch_pass(dataset, *tokenizer, chat_template, 1);
  const EpochPass many = epoch_pass(dataset, *tokenizer, chat_template, threads);
  if (one.hash != many.hash || one.batches != many.batches) {
    std::fprintf(stderr, "FAILED: %d threads gave other batches than one (%lld vs %lld batches)\n", threads,
                 static_cast<long long>(many.batches), static_cast<long long>(one.batches));
    return 1;
  }
  std::printf("epoch, packed     1 thread %8.0f tokens/s %d threads %8.0f tokens/s ratio %.2fx (%lld batches of 2048, equal)\n",
              static_cast<double>(one.tokens) / one.seconds, threads, static_cast<double>(many.tokens) / many.seconds,
              one.seconds / many.seconds, static_cast<long long>(one.batches));
  if (const auto own = data::model_chat_template(tokenizer_dir, *tokenizer)) {
    const EpochPass jinja = epoch_pass(dataset, *tokenizer, *own, 1);
    std::printf("epoch, packed     1 thread, the model's Jinja template %8.0f tokens/s, chatml built-in %8.0f tokens/s: %.2fx\n",
                static_cast<double>(jinja.tokens) / jinja.seconds, static_cast<double>(one.tokens) / one.seconds,
                (static_cast<double>(jinja.tokens) / jinja.seconds) / (static_cast<double>(one.tokens) / one.seconds));
  }
  fs::remove_all(dir);
  return 0;
}
