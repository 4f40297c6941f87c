// Run-time SIMD selection for the CPU kernels. Functions using SSE4.1 intrinsics are
// compiled with SHARDLORA_TARGET_SSE41 and called only when cpu_has_sse41() is true, so
// the library still runs on any x86-64.
#pragma once

#define SHARDLORA_TARGET_SSE41 __attribute__((target("ssse3,sse4.1")))

namespace shardlora::kernels {

bool cpu_has_sse41();

}  // namespace shardlora::kernels
