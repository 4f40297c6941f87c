// Small integer helpers shared by the kernels.
#pragma once

#include <cstdint>

namespace shardlora::kernels {

// log2 of a power of two (the dispatch has validated that it is one).
inline int log2_exact(int64_t power_of_two) {
  int log2 = 0;
  while ((int64_t{1} << log2) < power_of_two) ++log2;
  return log2;
}

}  // namespace shardlora::kernels
