#include "shardlora/data/data_loader.h"

#include <algorithm>

#include "shardlora/kernels/check.h"
#include "shardlora/util/parallel_tasks.h"

namespace shardlora::data {

DataLoader::DataLoader(const Dataset& dataset, const Tokenizer& tokenizer, std::vector<int64_t> indices, int64_t world_size,
                       int64_t rank, uint64_t seed, LoaderOptions options)
    : dataset_(dataset),
      tokenizer_(tokenizer),
      indices_(std::move(indices)),
      options_(options),
      sampler_(static_cast<int64_t>(indices_.size()), world_size, rank, seed),
      pad_id_(tokenizer.special().pad.value_or(tokenizer.special().eos.value_or(0))) {
  SHARDLORA_CHECK(options.micro_batch_size >= 1, "micro_batch_size must be at least 1, found ", options.micro_batch_size);
  SHARDLORA_CHECK(options.max_seq_len >= 2, "max_seq_len must be at least 2, found ", options.max_seq_len);
}

namespace {

// Samples tokenized per refill and thread: enough to keep threads busy, few enough that the
// look past a run's last step or an epoch's end costs little.
constexpr int64_t kWindowPerThread = 16;

bool same_position(const SamplerPosition& a, const SamplerPosition& b) {
  return a.epoch == b.epoch && a.offset == b.offset && a.base == b.base;
}

}  // namespace

PreparedExample DataLoader::next_prepared() {
  if (window_next_ == window_.size()) {
    const SamplerPosition start = sampler_.position();
    const int threads = resolve_task_threads(options_.threads);
    window_.assign(static_cast<size_t>(threads * kWindowPerThread), {});
    std::vector<int64_t> samples;
    for (Ahead& ahead : window_) {
      ahead.before = sampler_.position();
      samples.push_back(indices_[static_cast<size_t>(sampler_.next())]);
    }
    sampler_.restore(start);
    std::vector<PreparedExample> prepared = prepare_examples(dataset_, samples, tokenizer_, options_.prompt, threads);
    for (size_t i = 0; i < window_.size(); ++i) window_[i].prepared = std::move(prepared[i]);
    window_next_ = 0;
  }
  sampler_.next();
  return window_[window_next_++].prepared;  // a copy: restore() may step back onto it
}

Example DataLoader::next_example() {
  // A dataset whose every sample is too long would loop forever: give up after a full epoch of drops.
  for (int64_t attempts = 0; attempts <= static_cast<int64_t>(indices_.size()); ++attempts) {
    PreparedExample prepared = next_prepared();
    if (prepared.error) {
      if (!options_.skip_malformed) throw Error(*prepared.error);
      ++stats_.malformed;
      continue;
    }
    Example example = std::move(prepared.example);
    const bool too_long = static_cast<int64_t>(example.input_ids.size()) > options_.max_seq_len;
    if (!fit_to_length(&example, options_.max_seq_len, options_.over_length)) {
      ++stats_.dropped;
      continue;
    }
    stats_.truncated += too_long;
    ++stats_.examples;
    return example;
  }
  throw Error(dataset_.location(0) + ": no sample is usable: every one is malformed (skipped) or longer than max_seq_len " +
              std::to_string(options_.max_seq_len) + " and the policy drops it (" + describe(stats_) + ")");
}

Batch DataLoader::next() {
  std::vector<Example> examples;
  if (!options_.packing) {
    for (int64_t i = 0; i < options_.micro_batch_size; ++i) examples.push_back(next_example());
    return pad_batch(examples, pad_id_);
  }
  int64_t rows = 0, used = options_.max_seq_len;
  while (true) {
    const LoaderPosition before = position();
    Example example = next_example();
    const auto length = static_cast<int64_t>(example.input_ids.size());
    if (used + length > options_.max_seq_len) {
      if (rows == options_.micro_batch_size) {
        restore(before);  // it starts the next batch
        break;
      }
      ++rows;
      used = 0;
    }
    used += length;
    examples.push_back(std::move(example));
  }
  return pack_batch(examples, options_.max_seq_len, pad_id_);
}

void DataLoader::restore(const LoaderPosition& position) {
  // Packing steps back over the example that starts the next batch: it is still in the
  // window. Any other position starts a new one.
  const auto ahead = std::find_if(window_.begin(), window_.end(),
                                  [&](const Ahead& entry) { return same_position(entry.before, position.sampler); });
  window_next_ = static_cast<size_t>(ahead - window_.begin());
  sampler_.restore(position.sampler);
  stats_ = position.stats;
}

std::string describe(const LoaderStats& stats) {
  return std::to_string(stats.examples) + " examples, " + std::to_string(stats.truncated) + " truncated, " +
         std::to_string(stats.dropped) + " dropped, " + std::to_string(stats.malformed) + " malformed skipped";
}

}  // namespace shardlora::data
