// AdamW step throughput on the CPU: shardlora's optimizer (fused one-pass kernel; cpu and
// paged placements, 32-bit and 8-bit state) against torch::optim::AdamW on the same
// parameters and gradients in the same run, with the bytes each update moves per parameter
// and the bandwidth achieved against a memcpy moving as many bytes. Before timing, one step
// of each 32-bit variant must match torch's to 1e-6 relative; else exit 1. With a CUDA
// device (libtorch with CUDA): the paged step against state on the device, 40M parameters.
//
//   bench_adamw [--params 10000000,100000000] [--steps N] [--threads 2]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "shardlora/optim/adamw.h"

using namespace shardlora;

namespace {

struct Args {
  std::vector<int64_t> sizes = {10'000'000, 100'000'000};
  int64_t steps = 0;  // 0: enough for ~1e9 parameter updates per variant, at least 3
  int threads = 2;
};

template <typename F>
double seconds_per_call(int64_t calls, F&& f) {
  f();  // warm-up: first-touch page faults, thread pool start
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < calls; ++i) f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / static_cast<double>(calls);
}

torch::Tensor fresh_param(int64_t n) {
  torch::manual_seed(1);
  torch::Tensor p = torch::randn({n}).requires_grad_(true);
  p.mutable_grad() = torch::randn({n}) * 1e-2;
  return p;
}

// In units of |p| + lr: fp32 rounds the parameter and the update separately.
double max_relative_difference(const torch::Tensor& a, const torch::Tensor& b, double lr) {
  return ((a - b).abs() / (b.abs() + lr)).max().item<double>();
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--params") {
      args.sizes.clear();
      for (size_t pos = 0; pos < value.size();) {
        const size_t comma = value.find(',', pos);
        args.sizes.push_back(std::stoll(value.substr(pos, comma - pos)));
        pos = comma == std::string::npos ? value.size() : comma + 1;
      }
    } else if (flag == "--steps") {
      args.steps = std::stoll(value);
    } else if (flag == "--threads") {
      args.threads = std::stoi(value);
    } else {
      std::fprintf(stderr, "usage: bench_adamw [--params N,M] [--steps N] [--threads T]\n");
      return 2;
    }
  }
  at::set_num_threads(args.threads);
  std::printf("AdamW step, %d threads (torch and shardlora alike); bytes moved per parameter: 32-bit state 28 "
              "(read p g m v, write p m v), 8-bit ~16\n\n",
              args.threads);
  std::printf("%12s  %-28s %10s %12s %9s %10s\n", "parameters", "variant", "ms/step", "Mparams/s", "vs torch", "GB/s");
  bool ok = true;
  for (const int64_t n : args.sizes) {
    const int64_t steps = args.steps ? args.steps : std::max<int64_t>(3, 1'000'000'000 / n / 4);
    // Validation outside the timed loops: one step of each 32-bit variant against torch.
    torch::Tensor reference = fresh_param(n);
    torch::optim::AdamW torch_adamw({reference}, torch::optim::AdamWOptions(1e-3).weight_decay(0.01));
    torch_adamw.step();

    struct Variant {
      const char* name;
      optim::AdamWOptions options;
    };
    optim::AdamWOptions cpu32;
    cpu32.threads = args.threads;
    optim::AdamWOptions paged32 = cpu32;
    paged32.placement = optim::Placement::Paged;
    paged32.page_elements = 1 << 20;
    paged32.staging_pages = 4;
    optim::AdamWOptions cpu8 = cpu32;
    cpu8.state_bits = 8;
    const Variant variants[] = {{"shardlora cpu 32-bit", cpu32}, {"shardlora paged 32-bit (4x4MB)", paged32},
                                {"shardlora cpu 8-bit", cpu8}};
    for (const Variant& variant : variants) {
      if (variant.options.state_bits != 32) continue;
      torch::Tensor p = fresh_param(n);
      optim::AdamW adamw({p}, variant.options);
      adamw.step();
      const double difference = max_relative_difference(p, reference, 1e-3);
      if (!(difference <= 1e-6)) {
        std::fprintf(stderr, "%s: after one step the parameters differ from torch's by %.3g relative\n", variant.name, difference);
        ok = false;
      }
    }

    const double torch_seconds = seconds_per_call(steps, [&] { torch_adamw.step(); });
    std::printf("%12lld  %-28s %10.2f %12.1f %9s %10s\n", static_cast<long long>(n), "torch::optim::AdamW", 1e3 * torch_seconds,
                n / torch_seconds / 1e6, "1.00x", "");
    for (const Variant& variant : variants) {
      torch::Tensor p = fresh_param(n);
      optim::AdamW adamw({p}, variant.options);
      const double seconds = seconds_per_call(steps, [&] { adamw.step(); });
      const double bytes = variant.options.state_bits == 32 ? 28.0 : 12.0 + 2 * 2 * (1.0 + 4.0 / 256);
      std::printf("%12lld  %-28s %10.2f %12.1f %8.2fx %10.2f\n", static_cast<long long>(n), variant.name, 1e3 * seconds,
                  n / seconds / 1e6, torch_seconds / seconds, bytes * n / seconds / 1e9);
    }
    // memcpy moving 28 bytes per parameter (14 read + 14 written).
    std::vector<char> source(static_cast<size_t>(14 * n), 1), destination(static_cast<size_t>(14 * n));
    const double memcpy_seconds = seconds_per_call(steps, [&] { std::memcpy(destination.data(), source.data(), source.size()); });
    std::printf("%12lld  %-28s %10.2f %12s %9s %10.2f\n\n", static_cast<long long>(n), "memcpy of 14 B/param (1 thread)",
                1e3 * memcpy_seconds, "", "", 28.0 * n / memcpy_seconds / 1e9);
  }
  if (torch::cuda::is_available()) {
    // Paged (4 staging pages of 1M elements) against state on the device, 40M parameters.
    const int64_t n = 40'000'000, steps = 20;
    optim::AdamWOptions device_options;
    device_options.placement = optim::Placement::Device;
    optim::AdamWOptions paged_options = device_options;
    paged_options.placement = optim::Placement::Paged;
    paged_options.page_elements = 1 << 20;
    paged_options.staging_pages = 4;
    double device_seconds = 0;
    for (const auto& options : {device_options, paged_options}) {
      torch::Tensor p = fresh_param(n).detach().to(torch::kCUDA).requires_grad_(true);
      p.mutable_grad() = torch::randn({n}, torch::kCUDA) * 1e-2;
      optim::AdamW adamw({p}, options);
      const double seconds = seconds_per_call(steps, [&] { adamw.step(); });  // step() ends synchronized
      if (options.placement == optim::Placement::Device) device_seconds = seconds;
      std::printf("%12lld  %-28s %10.2f %12.1f %9s %10s\n", static_cast<long long>(n),
                  options.placement == optim::Placement::Device ? "CUDA, state on device" : "CUDA, paged 4x1M",
                  1e3 * seconds, n / seconds / 1e6, "", "");
      if (options.placement == optim::Placement::Paged) {
        std::printf("%12s  paged / device step time %.2fx; host<->device %.2f GB/s (8 B/param each way)\n", "",
                    seconds / device_seconds, 16.0 * n / seconds / 1e9);
      }
    }
  }
  return ok ? 0 : 1;
}
