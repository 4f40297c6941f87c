// nn::KvCache: appended tokens come back in order after every growth, buffers grow by an
// eighth (at least kMinKvCacheGrowth tokens) so appends rarely copy, and a windowed layer
// holds its last tokens in a bounded buffer.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "shardlora/nn/kv_cache.h"

using namespace shardlora::nn;

namespace {

// Token t's keys: every element t (values: -t), [1 batch, 2 heads, count, 3 dims].
torch::Tensor tokens(int64_t first, int64_t count) {
  return torch::arange(first, first + count, torch::kFloat32).view({1, 1, count, 1}).expand({1, 2, count, 3});
}

void expect_tokens(const torch::Tensor& held, int64_t first, int64_t count, float sign, int64_t step) {
  ASSERT_EQ(held.size(2), count) << "after step " << step;
  EXPECT_TRUE(torch::equal(held, sign * tokens(first, count))) << "after step " << step;
}

}  // namespace

TEST(KvCache, AppendedTokensComeBackInOrderAndGrowthsAreFew) {
  KvCache cache;
  const auto [prefill_keys, prefill_values] = cache.append(0, tokens(0, 300), -tokens(0, 300));
  expect_tokens(prefill_keys, 0, 300, 1, 0);
  int64_t growths = 1, capacity = cache.capacity(0);
  for (int64_t t = 300; t < 10000; ++t) {
    const auto [keys, values] = cache.append(0, tokens(t, 1), -tokens(t, 1));
    if (t % 997 == 0 || t == 9999) {
      expect_tokens(keys, 0, t + 1, 1, t);
      expect_tokens(values, 0, t + 1, -1, t);
    }
    if (cache.capacity(0) != capacity) ++growths;
    capacity = cache.capacity(0);
    ASSERT_GE(capacity, t + 1);
    ASSERT_LE(capacity, t + 1 + std::max<int64_t>((t + 1) / 8, kMinKvCacheGrowth));
  }
  EXPECT_EQ(cache.held(0), 10000);
  EXPECT_LT(growths, 25) << "torch.cat would copy the cache for each of the 9,700 tokens";
  EXPECT_EQ(cache.held(1), 0) << "a layer not appended to holds nothing";
}

TEST(KvCache, AWindowedLayerHoldsItsLastTokensInABoundedBuffer) {
  KvCache cache;
  constexpr int64_t kKept = 4;
  for (int64_t t = 0; t < 2000; ++t) {
    const auto [keys, values] = cache.append(3, tokens(t, 1), -tokens(t, 1));
    const int64_t seen = std::min<int64_t>(t + 1, kKept + 1);
    expect_tokens(keys, t + 1 - seen, seen, 1, t);
    expect_tokens(values, t + 1 - seen, seen, -1, t);
    cache.keep_last(3, kKept);
    ASSERT_EQ(cache.held(3), std::min<int64_t>(t + 1, kKept));
    ASSERT_LE(cache.capacity(3), kKept + 1 + kMinKvCacheGrowth);
  }
}
