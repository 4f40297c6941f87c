#include "shardlora/kernels/cpu_features.h"

#include <atomic>

#include "common/cpu_simd.h"

namespace shardlora::kernels {
namespace {

std::atomic<bool> g_simd_enabled{true}, g_avx512_enabled{true};

}  // namespace

bool cpu_has_sse41() {
  static const bool supported = __builtin_cpu_supports("ssse3") && __builtin_cpu_supports("sse4.1");
  return supported && g_simd_enabled.load(std::memory_order_relaxed);
}

bool cpu_has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                __builtin_cpu_supports("f16c");
  return supported && g_simd_enabled.load(std::memory_order_relaxed);
}

bool cpu_has_avx512() {
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl");
  return supported && cpu_has_avx2() && g_avx512_enabled.load(std::memory_order_relaxed);
}

const char* cpu_kernel_isa() {
  if (cpu_has_avx512()) return "avx512";
  if (cpu_has_avx2()) return "avx2";
  return cpu_has_sse41() ? "sse4.1" : "scalar";
}

void set_cpu_simd_enabled(bool enabled) { g_simd_enabled.store(enabled, std::memory_order_relaxed); }

void set_cpu_avx512_enabled(bool enabled) { g_avx512_enabled.store(enabled, std::memory_order_relaxed); }

}  // namespace shardlora::kernels
