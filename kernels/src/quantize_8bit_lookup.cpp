#include "common/quantize_8bit_lookup.h"

#include <climits>

#include "common/quantize_value.h"
#include "shardlora/kernels/check.h"

namespace shardlora::kernels {
namespace {

Quantize8bitLookup build(QuantType type) {
  Quantize8bitLookup lookup;
  lookup.map = quant_type_traits(type).code;
  const int64_t lowest = ordered_key(-__builtin_inff()), highest = ordered_key(__builtin_inff());
  const auto code = [&](int64_t key) { return quantize_8bit_value(lookup.map, from_ordered_key(key)); };
  for (int k = 1; k < 256; ++k) {
    int64_t lo = lowest, hi = highest + 1;  // the smallest key in [-inf, +inf] with code >= k (hi: none)
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (code(mid) >= k) hi = mid; else lo = mid + 1;
    }
    lookup.threshold[k] = static_cast<int32_t>(lo);
  }
  lookup.threshold[256] = INT32_MAX;
  for (int bucket = 0; bucket < 65536; ++bucket) {
    const int64_t bottom = std::max<int64_t>(static_cast<int64_t>(bucket - 32768) * 65536, lowest);
    const int64_t top = std::min<int64_t>(bottom | 0xffff, highest);
    if (bottom > highest) continue;  // NaN keys only: their lanes take the reference
    const uint8_t first = code(bottom);
    lookup.first_code[bucket] = first;
    SHARDLORA_CHECK(code(top) <= first + 1, "8-bit lookup: bucket ", bucket, " holds more than one threshold");
  }
  return lookup;
}

}  // namespace

const Quantize8bitLookup& Quantize8bitLookup::for_map(QuantType type) {
  static const Quantize8bitLookup signed_lookup = build(QuantType::DYNAMIC8_SIGNED);
  static const Quantize8bitLookup unsigned_lookup = build(QuantType::DYNAMIC8_UNSIGNED);
  SHARDLORA_CHECK(type == QuantType::DYNAMIC8_SIGNED || type == QuantType::DYNAMIC8_UNSIGNED, "8-bit lookup: ",
                  quant_type_traits(type).name, " is not a dynamic 8-bit map");
  return type == QuantType::DYNAMIC8_SIGNED ? signed_lookup : unsigned_lookup;
}

}  // namespace shardlora::kernels
