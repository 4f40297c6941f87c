// Which SIMD paths the CPU kernels use. They pick the best the processor supports at run
// time; every path gives bit-identical results (tests run each one against the reference).
#pragma once

namespace shardlora::kernels {

// "avx2" (the fused ops; the others use its SSE4.1), "sse4.1" or "scalar": the paths
// the CPU kernels take now.
const char* cpu_kernel_isa();

// Tests and benchmarks turn SIMD off to exercise and compare the scalar path.
void set_cpu_simd_enabled(bool enabled);

}  // namespace shardlora::kernels
