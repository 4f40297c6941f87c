// Batches for one rank: samples in the sharded sampler's order, tokenized by format and
// template, fitted to max_seq_len (truncated or dropped, counted), then padded per batch or
// packed into micro_batch_size rows of max_seq_len. Packing never splits an example: one
// that does not fit in the last row is left for the next batch (the sampler is rewound to
// it), so the position after a batch is exact and a restored loader yields the same batches.
// Samples are tokenized ahead, a window at a time, on the rank's threads; the window only
// changes when the work is done, never what comes out or the position.
#pragma once

#include <string>
#include <vector>

#include "shardlora/data/dataset.h"
#include "shardlora/data/sampler.h"

namespace shardlora::data {

struct LoaderOptions {
  int64_t micro_batch_size = 1;  // rows per batch
  int64_t max_seq_len = 2048;
  bool packing = false;
  OverLength over_length = OverLength::Truncate;
  bool skip_malformed = false;  // a record that fails to parse or render is skipped and counted, not an error
  PromptOptions prompt;
  int threads = 0;  // tokenizing ahead: 0 = the rank's libtorch thread count
};

struct LoaderStats {
  int64_t examples = 0, truncated = 0, dropped = 0, malformed = 0;
};

struct LoaderPosition {
  SamplerPosition sampler;
  LoaderStats stats;
};

class DataLoader {
 public:
  // `indices`: the dataset samples this loader draws from (e.g. the training split); the
  // sampler shards them over `world_size` ranks.
  DataLoader(const Dataset& dataset, const Tokenizer& tokenizer, std::vector<int64_t> indices, int64_t world_size,
             int64_t rank, uint64_t seed, LoaderOptions options);

  Batch next();

  LoaderPosition position() const { return {sampler_.position(), stats_}; }
  void restore(const LoaderPosition& position);
  const LoaderStats& stats() const { return stats_; }
  int64_t epoch() const { return sampler_.position().epoch; }

 private:
  // The next example that survives the length and error policies (drops and skips are counted).
  Example next_example();
  // The sampler's next sample, taken from the window (tokenized ahead, refilled when used up).
  PreparedExample next_prepared();

  struct Ahead {
    SamplerPosition before;  // the sampler's position before this sample was drawn
    PreparedExample prepared;
  };

  const Dataset& dataset_;
  const Tokenizer& tokenizer_;
  std::vector<int64_t> indices_;
  LoaderOptions options_;
  ShardedSampler sampler_;
  LoaderStats stats_;
  int64_t pad_id_;
  std::vector<Ahead> window_;
  size_t window_next_ = 0;  // window_[window_next_] is the sampler's next sample
};

// "12 examples, 1 truncated, 0 dropped, 2 malformed skipped", for logs.
std::string describe(const LoaderStats& stats);

}  // namespace shardlora::data
