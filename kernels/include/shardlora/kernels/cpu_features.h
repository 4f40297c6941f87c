// Which SIMD paths the CPU kernels use. They pick the best the processor supports at run
// time; every path gives bit-identical results (tests run each one against the reference).
#pragma once

namespace shardlora::kernels {

// "avx512" (4-bit quantization codes and the cross-entropy's exponentials; the rest as
// avx2), "avx2" (the fused ops, 8-bit AdamW, 4-bit quantization; the others use its SSE4.1),
// "sse4.1" or "scalar": the best path the CPU kernels take now.
const char* cpu_kernel_isa();

// Tests and benchmarks turn SIMD off to exercise and compare the scalar path, or AVX-512 off
// to exercise the AVX2 path on a CPU that has both.
void set_cpu_simd_enabled(bool enabled);
void set_cpu_avx512_enabled(bool enabled);

}  // namespace shardlora::kernels
