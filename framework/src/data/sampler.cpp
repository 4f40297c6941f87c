#include "shardlora/data/sampler.h"

#include <numeric>
#include <random>

#include "shardlora/kernels/check.h"

namespace shardlora::data {
namespace {

// Uniform in [0, bound) by rejection: std::uniform_int_distribution's algorithm is left to
// the library, this one is not.
uint64_t draw_below(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
  uint64_t value = rng();
  while (value >= limit) value = rng();
  return value % bound;
}

}  // namespace

ShardedSampler::ShardedSampler(int64_t num_samples, int64_t world_size, int64_t rank, uint64_t seed, bool shuffle)
    : num_samples_(num_samples), world_size_(world_size), rank_(rank), seed_(seed), shuffle_(shuffle) {
  SHARDLORA_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "sampler: rank ", rank, " of world size ", world_size);
  SHARDLORA_CHECK(num_samples >= world_size, "sampler: ", num_samples, " samples cannot feed ", world_size,
                  " ranks (each rank needs at least one)");
  current_ = epoch_samples(0);
}

std::vector<int64_t> ShardedSampler::epoch_samples(int64_t epoch, int64_t base) const {
  std::vector<int64_t> order(static_cast<size_t>(num_samples_));
  std::iota(order.begin(), order.end(), int64_t{0});
  if (shuffle_) {
    std::mt19937_64 rng(seed_ * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(epoch));
    for (size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[draw_below(rng, i + 1)]);
  }
  std::vector<int64_t> mine;
  for (size_t i = static_cast<size_t>(base + rank_); i < order.size(); i += static_cast<size_t>(world_size_)) mine.push_back(order[i]);
  return mine;
}

int64_t ShardedSampler::next() {
  if (position_.offset == samples_per_epoch()) {
    position_ = {position_.epoch + 1, 0, 0};
    current_ = epoch_samples(position_.epoch);
  }
  return current_[static_cast<size_t>(position_.offset++)];
}

void ShardedSampler::restore(const SamplerPosition& position) {
  SHARDLORA_CHECK(position.epoch >= 0 && position.offset >= 0 && position.base >= 0 && position.base <= num_samples_,
                  "sampler: invalid position epoch ", position.epoch, ", offset ", position.offset, ", base ", position.base);
  // The loader rewinds within the epoch after every packed batch: keep the permutation then.
  const bool same_layout = position.epoch == position_.epoch && position.base == position_.base;
  std::vector<int64_t> other;
  if (!same_layout) other = epoch_samples(position.epoch, position.base);
  const auto& samples = same_layout ? current_ : other;
  SHARDLORA_CHECK(position.offset <= static_cast<int64_t>(samples.size()), "sampler: offset ", position.offset,
                  " is past this rank's ", samples.size(), " samples per epoch (a different dataset or world size?)");
  if (!same_layout) current_ = std::move(other);
  position_ = position;
}

}  // namespace shardlora::data
