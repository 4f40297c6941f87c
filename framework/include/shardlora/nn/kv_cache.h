// Keys and values of the tokens seen so far, per layer, for incremental decoding. A layer's
// are held in buffers [batch, kv_heads, capacity, head_dim] with room to spare (an eighth, and
// at least kMinKvCacheGrowth tokens), so a decoded token is written in place instead of the
// whole cache being copied for it (torch.cat, as HF's DynamicCache does). A windowed layer
// keeps only the tokens a later one may still attend to (keep_last); a full buffer is then
// moved to the front of a new one.
#pragma once

#include <torch/torch.h>

#include <utility>
#include <vector>

namespace shardlora::nn {

constexpr int64_t kMinKvCacheGrowth = 256;

class KvCache {
 public:
  // Appends layer `layer`'s keys and values [batch, kv_heads, seq, head_dim] and returns the
  // tokens it holds, the new ones last (views, valid until its next append).
  std::pair<torch::Tensor, torch::Tensor> append(size_t layer, const torch::Tensor& keys, const torch::Tensor& values);
  // Tokens held for `layer`: 0 before its first append.
  int64_t held(size_t layer) const;
  // Tokens the buffers of `layer` have room for.
  int64_t capacity(size_t layer) const;
  // Drops all but the last `tokens` tokens of `layer`.
  void keep_last(size_t layer, int64_t tokens);

  int64_t length = 0;  // tokens seen, the position of the next one

 private:
  struct Layer {
    torch::Tensor keys, values;
    int64_t begin = 0, end = 0;  // the held tokens' slots
  };
  std::vector<Layer> layers_;
};

}  // namespace shardlora::nn
