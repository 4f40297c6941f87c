// Dequantize NF4 -> bf16 / fp32: GB/s of output written, as a fraction of a plain copy of
// the same number of output bytes measured in the same run (memcpy on the CPU,
// device-to-device cudaMemcpy on a GPU). Results are validated against the scalar
// reference before timing; a mismatch exits 1.
//
//   bench_dequantize_4bit [--numel N] [--iters K] [--cpu-only]
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "shardlora/kernels/dequantize_4bit.h"

using namespace shardlora::kernels;

namespace {

double seconds_per_call(int iters, const std::function<void()>& call, const std::function<void()>& sync) {
  call();  // warm-up: page faults, first-touch, kernel load
  sync();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) call();
  sync();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / iters;
}

struct Row {
  std::string device, output;
  double ours_gbs, copy_gbs;
};

void print_rows(const std::vector<Row>& rows, int64_t numel, int threads) {
  std::printf("dequantize_4bit NF4, %lld elements, blocksize 64, %d CPU threads\n",
              static_cast<long long>(numel), threads);
  std::printf("%-6s %-9s %14s %14s %8s\n", "device", "output", "dequant GB/s", "copy GB/s", "ratio");
  for (const Row& row : rows) {
    std::printf("%-6s %-9s %14.1f %14.1f %8.2f\n", row.device.c_str(), row.output.c_str(), row.ours_gbs,
                row.copy_gbs, row.ours_gbs / row.copy_gbs);
  }
}

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
    else { std::fprintf(stderr, "usage: %s [--numel N] [--iters K] [--cpu-only]\n", argv[0]); return 2; }
  }
  const int64_t blocksize = 64;
  std::mt19937 rng(1);
  std::vector<uint8_t> codes(static_cast<size_t>((numel + 1) / 2));
  for (auto& code : codes) code = static_cast<uint8_t>(rng());
  std::vector<float> absmax(static_cast<size_t>((numel + blocksize - 1) / blocksize));
  std::uniform_real_distribution<float> scale(0.01f, 2.0f);
  for (auto& value : absmax) value = scale(rng);
  const Packed4bit host{QuantType::NF4, codes.data(), absmax.data(), numel, blocksize};

  std::vector<Row> rows;
  bool valid = true;
  const DType outputs[] = {DType::BF16, DType::F32};
  for (const DType dtype : outputs) {
    const size_t out_bytes = static_cast<size_t>(numel) * dtype_size(dtype);
    std::vector<uint8_t> expected(out_bytes), actual(out_bytes), copy_dst(out_bytes);
    dequantize_4bit_ref(host, expected.data(), dtype);
    dequantize_4bit(host, actual.data(), dtype, Device::cpu());
    if (std::memcmp(expected.data(), actual.data(), out_bytes) != 0) {
      std::fprintf(stderr, "cpu %s: result differs from dequantize_4bit_ref\n", dtype_name(dtype));
      valid = false;
    }
    const auto no_sync = [] {};
    const double ours = seconds_per_call(iters, [&] { dequantize_4bit(host, actual.data(), dtype, Device::cpu()); }, no_sync);
    // A parallel copy, as fast as the machine's memory allows, is the fair baseline.
    const double copy = seconds_per_call(iters, [&] {
#pragma omp parallel for schedule(static)
      for (int chunk = 0; chunk < 64; ++chunk) {
        const size_t begin = out_bytes * chunk / 64, end = out_bytes * (chunk + 1) / 64;
        std::memcpy(copy_dst.data() + begin, expected.data() + begin, end - begin);
      }
    }, no_sync);
    rows.push_back({"cpu", dtype_name(dtype), out_bytes / ours / 1e9, out_bytes / copy / 1e9});

    if (cpu_only || cuda_runtime_info().device_count == 0) continue;
    void* d_codes = cuda_malloc(codes.size());
    void* d_absmax = cuda_malloc(absmax.size() * sizeof(float));
    void* d_out = cuda_malloc(out_bytes);
    void* d_copy = cuda_malloc(out_bytes);
    cuda_copy_to_device(d_codes, codes.data(), codes.size());
    cuda_copy_to_device(d_absmax, absmax.data(), absmax.size() * sizeof(float));
    const Packed4bit device{QuantType::NF4, static_cast<uint8_t*>(d_codes), static_cast<float*>(d_absmax), numel, blocksize};
    dequantize_4bit(device, d_out, dtype, Device::cuda());
    cuda_copy_to_host(actual.data(), d_out, out_bytes);
    if (std::memcmp(expected.data(), actual.data(), out_bytes) != 0) {
      std::fprintf(stderr, "cuda %s: result differs from dequantize_4bit_ref\n", dtype_name(dtype));
      valid = false;
    }
    const double gpu_ours = seconds_per_call(iters * 10, [&] { dequantize_4bit(device, d_out, dtype, Device::cuda()); }, cuda_synchronize);
    const double gpu_copy = seconds_per_call(iters * 10, [&] { cuda_copy_on_device(d_copy, d_out, out_bytes); }, cuda_synchronize);
    // The copy reads and writes out_bytes; dequant reads ~out_bytes/4 (bf16) and writes out_bytes.
    // Both are reported as output bytes written per second, as the goal is stated.
    rows.push_back({"cuda", dtype_name(dtype), out_bytes / gpu_ours / 1e9, out_bytes / gpu_copy / 1e9});
    for (void* pointer : {d_codes, d_absmax, d_out, d_copy}) cuda_free(pointer);
  }
  print_rows(rows, numel, omp_get_max_threads());
  if (!valid) {
    std::fprintf(stderr, "FAILED: results differ from the reference\n");
    return 1;
  }
  return 0;
}
