// 4-bit quantization engine benchmarks. Every result is validated against the scalar
// references before it is timed; a wrong result exits 1. Ratios compare against a
// baseline measured in the same run on the same data.
//   CPU : dequantize NF4 with double quantization (8-bit absmax expanded, then 4-bit)
//         -> bf16 / fp32, GB/s of output written vs a parallel memcpy of the same bytes;
//         quantize bf16 -> NF4, GB/s of input read vs a memcpy of the input.
//   CUDA: the same dequantization vs a device-to-device copy of the output bytes;
//         fused gemv_4bit vs dequantize to bf16 + cuBLAS gemv, at Llama-3-8B shapes.
//
//   bench_quant_4bit [--numel N] [--iters K] [--cpu-only]
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "shardlora/kernels/blockwise_8bit.h"
#include "shardlora/kernels/cpu_features.h"
#include "shardlora/kernels/dequantize_4bit.h"
#include "shardlora/kernels/gemv_4bit.h"
#include "shardlora/kernels/half_float.h"
#include "shardlora/kernels/quantize_4bit.h"
#ifdef SHARDLORA_BENCH_CUDA
#include "cuda_timing.h"
#endif

using namespace shardlora::kernels;

namespace {

bool g_valid = true;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "INVALID: %s\n", what.c_str());
    g_valid = false;
  }
}

double host_seconds_per_call(int iters, const std::function<void()>& call) {
  call();  // warm-up: page faults, first touch
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) call();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / iters;
}

void parallel_memcpy(void* dst, const void* src, size_t bytes) {
#pragma omp parallel for schedule(static)
  for (int chunk = 0; chunk < 64; ++chunk) {
    const size_t begin = bytes * chunk / 64, end = bytes * (chunk + 1) / 64;
    std::memcpy(static_cast<char*>(dst) + begin, static_cast<const char*>(src) + begin, end - begin);
  }
}

// An NF4 weight with double-quantized absmax, as a checkpoint stores it.
struct Nf4Weight {
  int64_t numel, blocksize = 64;
  std::vector<uint16_t> bf16;          // the original weight
  std::vector<uint8_t> codes;
  std::vector<float> absmax;           // fp32 absmax (what dequantize_4bit reads)
  std::vector<uint8_t> nested_codes;   // double quantization
  std::vector<float> nested_absmax;
  float offset = 0;
  Blockwise8bit nested_shape() const { return {QuantType::DYNAMIC8_SIGNED, static_cast<int64_t>(absmax.size()), 256}; }
  Packed4bit packed(const uint8_t* c, const float* a) const { return {QuantType::NF4, c, a, numel, blocksize}; }
};

Nf4Weight make_weight(int64_t numel) {
  Nf4Weight w{numel};
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  w.bf16.resize(numel);
  for (auto& value : w.bf16) value = float_to_bf16_bits(normal(rng));
  w.codes.resize((numel + 1) / 2);
  w.absmax.resize((numel + w.blocksize - 1) / w.blocksize);
  quantize_4bit(w.bf16.data(), DType::BF16, {QuantType::NF4, w.codes.data(), w.absmax.data(), numel, w.blocksize}, Device::cpu());
  std::vector<double> sums((w.absmax.size() + 255) / 256);
  chunk_sums_f64(w.absmax.data(), static_cast<int64_t>(w.absmax.size()), 256, sums.data(), Device::cpu());
  w.offset = absmax_mean(sums.data(), static_cast<int64_t>(sums.size()), static_cast<int64_t>(w.absmax.size()));
  w.nested_codes.resize(w.absmax.size());
  w.nested_absmax.resize(sums.size());
  quantize_8bit_blockwise(w.absmax.data(), w.offset, w.nested_shape(), w.nested_codes.data(), w.nested_absmax.data(), Device::cpu());
  // From here on the fp32 absmax is the double-quantized one, as a loaded checkpoint has it.
  dequantize_8bit_blockwise(w.nested_codes.data(), w.nested_absmax.data(), w.offset, w.nested_shape(), w.absmax.data(), Device::cpu());
  return w;
}

struct Row {
  std::string what;
  double ours, baseline;  // GB/s or microseconds, see unit
  const char* unit;
  const char* baseline_name;
};

void print(const std::vector<Row>& rows) {
  std::printf("%-42s %12s %12s %8s  %s\n", "benchmark", "ours", "baseline", "ratio", "baseline");
  for (const Row& row : rows) {
    const bool time = std::strcmp(row.unit, "us") == 0;
    std::printf("%-42s %9.1f %-2s %9.1f %-2s %8.2f  %s\n", row.what.c_str(), row.ours, row.unit, row.baseline, row.unit,
                time ? row.baseline / row.ours : row.ours / row.baseline, row.baseline_name);
  }
  std::printf("(ratio > 1 is better for ours: throughput ours/baseline, time baseline/ours)\n");
}

void bench_cpu(const Nf4Weight& w, int iters, std::vector<Row>& rows) {
  std::vector<float> absmax(w.absmax.size());
  for (const DType dtype : {DType::BF16, DType::F32}) {
    const size_t out_bytes = static_cast<size_t>(w.numel) * dtype_size(dtype);
    std::vector<uint8_t> expected(out_bytes), actual(out_bytes), copy(out_bytes);
    dequantize_4bit_ref(w.packed(w.codes.data(), w.absmax.data()), expected.data(), dtype);
    auto dequantize = [&] {
      dequantize_8bit_blockwise(w.nested_codes.data(), w.nested_absmax.data(), w.offset, w.nested_shape(), absmax.data(), Device::cpu());
      dequantize_4bit(w.packed(w.codes.data(), absmax.data()), actual.data(), dtype, Device::cpu());
    };
    dequantize();
    expect(actual == expected, std::string("cpu dequantize -> ") + dtype_name(dtype));
    const double ours = host_seconds_per_call(iters, dequantize);
    const double base = host_seconds_per_call(iters, [&] { parallel_memcpy(copy.data(), expected.data(), out_bytes); });
    rows.push_back({std::string("cpu dequantize nf4+dq -> ") + dtype_name(dtype), out_bytes / ours / 1e9,
                    out_bytes / base / 1e9, "GB/s", "memcpy of the output bytes"});
  }
  std::vector<uint8_t> codes(w.codes.size());
  std::vector<float> absmax4(w.absmax.size());
  const Quantized4bit out{QuantType::NF4, codes.data(), absmax4.data(), w.numel, w.blocksize};
  std::vector<uint8_t> ref_codes(codes.size());
  std::vector<float> ref_absmax(absmax4.size());
  quantize_4bit_ref(w.bf16.data(), DType::BF16, {QuantType::NF4, ref_codes.data(), ref_absmax.data(), w.numel, w.blocksize});
  quantize_4bit(w.bf16.data(), DType::BF16, out, Device::cpu());
  expect(codes == ref_codes && std::memcmp(absmax4.data(), ref_absmax.data(), ref_absmax.size() * 4) == 0, "cpu quantize");
  const size_t in_bytes = static_cast<size_t>(w.numel) * 2;
  std::vector<uint16_t> copy(w.numel);
  const double ours = host_seconds_per_call(iters, [&] { quantize_4bit(w.bf16.data(), DType::BF16, out, Device::cpu()); });
  const double base = host_seconds_per_call(iters, [&] { parallel_memcpy(copy.data(), w.bf16.data(), in_bytes); });
  rows.push_back({"cpu quantize bf16 -> nf4", in_bytes / ours / 1e9, in_bytes / base / 1e9, "GB/s", "memcpy of the input bytes"});
}

#ifdef SHARDLORA_BENCH_CUDA
template <typename T>
T* to_device(const std::vector<T>& host) {
  auto* device = static_cast<T*>(cuda_malloc(host.size() * sizeof(T)));
  cuda_copy_to_device(device, host.data(), host.size() * sizeof(T));
  return device;
}

template <typename T>
std::vector<T> to_host(const T* device, size_t count) {
  std::vector<T> host(count);
  cuda_synchronize();
  cuda_copy_to_host(host.data(), device, count * sizeof(T));
  return host;
}

void bench_cuda_dequantize(const Nf4Weight& w, int iters, std::vector<Row>& rows) {
  uint8_t* codes = to_device(w.codes);
  uint8_t* nested_codes = to_device(w.nested_codes);
  float* nested_absmax = to_device(w.nested_absmax);
  auto* absmax = static_cast<float*>(cuda_malloc(w.absmax.size() * 4));
  for (const DType dtype : {DType::BF16, DType::F32}) {
    const size_t out_bytes = static_cast<size_t>(w.numel) * dtype_size(dtype);
    std::vector<uint8_t> expected(out_bytes);
    dequantize_4bit_ref(w.packed(w.codes.data(), w.absmax.data()), expected.data(), dtype);
    void* out = cuda_malloc(out_bytes);
    void* copy = cuda_malloc(out_bytes);
    auto dequantize = [&] {
      dequantize_8bit_blockwise(nested_codes, nested_absmax, w.offset, w.nested_shape(), absmax, Device::cuda());
      dequantize_4bit(w.packed(codes, absmax), out, dtype, Device::cuda());
    };
    dequantize();
    expect(to_host(static_cast<uint8_t*>(out), out_bytes) == expected, std::string("cuda dequantize -> ") + dtype_name(dtype));
    const double ours = shardlora::bench::cuda_ms_per_call(iters, dequantize) / 1e3;
    const double base = shardlora::bench::cuda_ms_per_call(iters, [&] { cuda_copy_on_device(copy, out, out_bytes); }) / 1e3;
    rows.push_back({std::string("cuda dequantize nf4+dq -> ") + dtype_name(dtype), out_bytes / ours / 1e9,
                    out_bytes / base / 1e9, "GB/s", "device-to-device copy of the output bytes"});
    cuda_free(out);
    cuda_free(copy);
  }
  for (void* p : {static_cast<void*>(codes), static_cast<void*>(nested_codes), static_cast<void*>(nested_absmax), static_cast<void*>(absmax)}) cuda_free(p);
}

void bench_cuda_gemv(int iters, std::vector<Row>& rows) {
  const int64_t shapes[][2] = {{4096, 4096}, {14336, 4096}, {4096, 14336}};
  for (const auto& shape : shapes) {
    const int64_t rows_n = shape[0], cols = shape[1], numel = rows_n * cols;
    const Nf4Weight w = make_weight(numel);
    std::mt19937 rng(2);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<uint16_t> x(cols);
    for (auto& v : x) v = float_to_bf16_bits(normal(rng));
    std::vector<float> expected(rows_n);
    gemv_4bit_ref(w.packed(w.codes.data(), w.absmax.data()), {rows_n, cols}, x.data(), DType::BF16, expected.data(), DType::F32);

    uint8_t* codes = to_device(w.codes);
    float* absmax = to_device(w.absmax);
    uint16_t* d_x = to_device(x);
    auto* y = static_cast<uint16_t*>(cuda_malloc(rows_n * 2));
    auto* dense = static_cast<uint16_t*>(cuda_malloc(numel * 2));
    auto fused = [&] { gemv_4bit(w.packed(codes, absmax), {rows_n, cols}, d_x, DType::BF16, y, DType::BF16, Device::cuda()); };
    auto unfused = [&] {
      dequantize_4bit(w.packed(codes, absmax), dense, DType::BF16, Device::cuda());
      shardlora::bench::cublas_gemv_bf16(dense, d_x, y, static_cast<int>(rows_n), static_cast<int>(cols));
    };
    const std::string name = "gemv " + std::to_string(rows_n) + "x" + std::to_string(cols) + " bf16";
    for (const auto& [label, run] : {std::pair<const char*, std::function<void()>>{"fused", fused}, {"cublas", unfused}}) {
      run();
      const auto got = to_host(y, rows_n);
      double worst = 0;
      for (int64_t r = 0; r < rows_n; ++r) worst = std::max(worst, std::fabs(bf16_bits_to_float(got[r]) - expected[r]) / (std::fabs(expected[r]) + 1.0));
      expect(worst < 0.02, name + " " + label + ": relative error " + std::to_string(worst));
    }
    const double ours = shardlora::bench::cuda_ms_per_call(iters * 10, fused) * 1e3;
    const double base = shardlora::bench::cuda_ms_per_call(iters * 10, unfused) * 1e3;
    rows.push_back({name, ours, base, "us", "dequantize to bf16 + cuBLAS gemv"});
    for (void* p : {static_cast<void*>(codes), static_cast<void*>(absmax), static_cast<void*>(d_x), static_cast<void*>(y), static_cast<void*>(dense)}) cuda_free(p);
  }
}
#endif

}  // namespace

int main(int argc, char** argv) {
  int64_t numel = int64_t{1} << 26;  // 64 Mi elements: 128 MiB of bf16, well past the caches
  int iters = 20;
  bool cpu_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--numel" && i + 1 < argc) numel = std::atoll(argv[++i]);
    else if (arg == "--iters" && i + 1 < argc) iters = std::atoi(argv[++i]);
    else if (arg == "--cpu-only") cpu_only = true;
    else {
      std::fprintf(stderr, "usage: %s [--numel N] [--iters K] [--cpu-only]\n", argv[0]);
      return 2;
    }
  }
  std::printf("NF4, blocksize 64, double quantization; %lld elements; %d CPU threads, %s kernels\n",
              static_cast<long long>(numel), omp_get_max_threads(), cpu_kernel_isa());
  const Nf4Weight weight = make_weight(numel);
  std::vector<Row> rows;
  bench_cpu(weight, iters, rows);
#ifdef SHARDLORA_BENCH_CUDA
  if (!cpu_only && cuda_runtime_info().device_count > 0) {
    std::printf("device: %s\n", cuda_device_description(0).c_str());
    bench_cuda_dequantize(weight, iters * 10, rows);
    bench_cuda_gemv(iters, rows);
  }
#endif
  print(rows);
  if (!g_valid) {
    std::fprintf(stderr, "FAILED: results differ from the references\n");
    return 1;
  }
  return 0;
}
