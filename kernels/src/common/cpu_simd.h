// Run-time SIMD selection for the CPU kernels. Functions using SSE4.1 (AVX2, AVX-512)
// intrinsics are compiled with SHARDLORA_TARGET_SSE41 (_AVX2, _AVX512) and called only when
// cpu_has_sse41() (cpu_has_avx2(), cpu_has_avx512()) is true, so the library still runs on
// any x86-64.
#pragma once

#define SHARDLORA_TARGET_SSE41 __attribute__((target("ssse3,sse4.1")))
#define SHARDLORA_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define SHARDLORA_TARGET_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))

namespace shardlora::kernels {

bool cpu_has_sse41();
bool cpu_has_avx2();    // with FMA and F16C
bool cpu_has_avx512();  // F, BW and VL, with AVX2

}  // namespace shardlora::kernels
