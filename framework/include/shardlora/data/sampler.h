// Which samples a rank reads, in which order: each epoch a permutation of all samples drawn
// from (seed, epoch) by a generator whose output the C++ standard fixes (mt19937_64, and
// our own bounded draw, so every compiler and rank computes the same permutation); rank r of
// W takes every W-th entry starting at r, so ranks are disjoint and together cover each
// sample exactly once per epoch (ranks differ in count by at most one). The position is
// three integers, saved in checkpoints, so a resumed run reads the identical sequence.
// `base` lets a run resumed at another world size continue mid-epoch: the ranks then share
// the permutation's entries from `base` on (rank r takes base + r, base + r + W, ...).
#pragma once

#include <cstdint>
#include <vector>

namespace shardlora::data {

struct SamplerPosition {
  int64_t epoch = 0;
  int64_t offset = 0;  // samples this rank has taken in the epoch (since base)
  int64_t base = 0;    // permutation entries consumed before this world layout began (0 after a new epoch)
};

class ShardedSampler {
 public:
  ShardedSampler(int64_t num_samples, int64_t world_size, int64_t rank, uint64_t seed, bool shuffle = true);

  // The next sample index of this rank; moves to the next epoch after the rank's last.
  int64_t next();

  // This rank's samples of an epoch from permutation entry `base` on, in order.
  std::vector<int64_t> epoch_samples(int64_t epoch, int64_t base = 0) const;
  int64_t samples_per_epoch() const { return static_cast<int64_t>(current_.size()); }

  SamplerPosition position() const { return position_; }
  void restore(const SamplerPosition& position);

 private:
  int64_t num_samples_, world_size_, rank_;
  uint64_t seed_;
  bool shuffle_;
  SamplerPosition position_;
  std::vector<int64_t> current_;  // epoch_samples(position_.epoch)
};

}  // namespace shardlora::data
