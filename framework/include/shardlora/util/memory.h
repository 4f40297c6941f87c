// Process memory as the operating system counts it, for progress lines, metrics and the
// estimator's comparison.
#pragma once

#include <cstdint>

namespace shardlora {

// Peak resident set size of this process so far (getrusage), in bytes.
int64_t peak_rss_bytes();

}  // namespace shardlora
