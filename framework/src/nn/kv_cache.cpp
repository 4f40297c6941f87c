#include "shardlora/nn/kv_cache.h"

#include <algorithm>

namespace shardlora::nn {

std::pair<torch::Tensor, torch::Tensor> KvCache::append(size_t layer, const torch::Tensor& keys, const torch::Tensor& values) {
  if (layers_.size() <= layer) layers_.resize(layer + 1);
  Layer& slot = layers_[layer];
  const int64_t added = keys.size(2), held = slot.end - slot.begin;
  if (!slot.keys.defined() || slot.end + added > slot.keys.size(2)) {
    const int64_t needed = held + added, room = needed + std::max(needed / 8, kMinKvCacheGrowth);
    const auto moved = [&](const torch::Tensor& buffer, const torch::Tensor& like) {
      std::vector<int64_t> sizes = like.sizes().vec();
      sizes[2] = room;
      torch::Tensor fresh = torch::empty(sizes, like.options());
      if (held > 0) fresh.narrow(2, 0, held).copy_(buffer.narrow(2, slot.begin, held));
      return fresh;
    };
    slot.keys = moved(slot.keys, keys);
    slot.values = moved(slot.values, values);
    slot.begin = 0;
    slot.end = held;
  }
  slot.keys.narrow(2, slot.end, added).copy_(keys);
  slot.values.narrow(2, slot.end, added).copy_(values);
  slot.end += added;
  return {slot.keys.narrow(2, slot.begin, slot.end - slot.begin), slot.values.narrow(2, slot.begin, slot.end - slot.begin)};
}

int64_t KvCache::held(size_t layer) const { return layer < layers_.size() ? layers_[layer].end - layers_[layer].begin : 0; }

int64_t KvCache::capacity(size_t layer) const {
  return layer < layers_.size() && layers_[layer].keys.defined() ? layers_[layer].keys.size(2) : 0;
}

void KvCache::keep_last(size_t layer, int64_t tokens) {
  if (layer >= layers_.size()) return;
  Layer& slot = layers_[layer];
  slot.begin = std::max(slot.begin, slot.end - tokens);
}

}  // namespace shardlora::nn
