// Forward + backward tokens/s of a Llama model with LoRA adapters on every Linear, with a
// 4-bit NF4 base (QLoRA) and with a float base, and DoRA on the 4-bit base, on the same random
// model, same inputs, same run: the 4-bit overhead ratio, DoRA's cost over LoRA, and the
// peak RSS of each (each variant runs in its own process, so the peaks are separate). Before
// timing, the variants' first losses must agree (the 4-bit base approximates the float one;
// DoRA starts as LoRA does) and be finite; else exit 1. Then greedy decoding with the KV
// cache (the trained adapters unmerged, as `shardlora generate --adapter` runs them): tokens/s
// of each variant.
//
//   bench_qlora_step [--preset small|tiny] [--seq 512] [--steps 3] [--rank 16] [--threads N]
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include "child_process.h"
#include "shardlora/nn/generation.h"
#include "shardlora/nn/hf_loader.h"
#include "shardlora/nn/random_model.h"

using namespace shardlora;

namespace {

struct Result {
  double first_loss = 0, tokens_per_second = 0, step_ms = 0, peak_rss_mb = 0, decode_tokens_per_second = 0;
  int64_t trainable = 0;
};

constexpr int64_t kDecodeTokens = 32;

struct Args {
  std::string preset = "small";
  int64_t seq = 512, steps = 3, rank = 16;
  int threads = static_cast<int>(std::thread::hardware_concurrency());
};

Result run_variant(const std::string& dir, bool quantized, bool dora, const Args& args) {
  at::set_num_threads(args.threads);
  nn::ModelOptions options;
  options.compute_dtype = torch::kFloat32;  // CPU matmuls: fp32 for both variants
  options.quantize_base = quantized;
  options.lora = {.r = args.rank, .alpha = 2.0 * args.rank, .use_dora = dora};
  options.activation_checkpointing = true;  // as QLoRA recipes run
  auto model = nn::load_hf_model(dir, options);
  model->train();
  torch::manual_seed(0);
  const torch::Tensor ids = torch::randint(model->config().vocab_size, {1, args.seq}, torch::kInt64);
  Result result;
  for (const auto& parameter : model->parameters()) result.trainable += parameter.numel();
  const auto step = [&] {
    model->zero_grad();
    const torch::Tensor loss = torch::nn::functional::cross_entropy(model->forward(ids).view({args.seq, -1}), ids.view({-1}));
    loss.backward();
    return loss.item<double>();
  };
  result.first_loss = step();  // also the warm-up
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < args.steps; ++i) step();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.step_ms = 1e3 * seconds / args.steps;
  result.tokens_per_second = args.seq * args.steps / seconds;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  result.peak_rss_mb = usage.ru_maxrss / 1024.0;
  model->eval();
  torch::NoGradGuard no_grad;
  const std::vector<int64_t> prompt(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + std::min<int64_t>(64, args.seq));
  const auto decode_start = std::chrono::steady_clock::now();
  const auto generated = nn::generate(model, prompt, {.max_new_tokens = kDecodeTokens});
  result.decode_tokens_per_second = static_cast<double>(generated.size()) /
                                    std::chrono::duration<double>(std::chrono::steady_clock::now() - decode_start).count();
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--preset") args.preset = value;
    else if (flag == "--seq") args.seq = std::stoll(value);
    else if (flag == "--steps") args.steps = std::stoll(value);
    else if (flag == "--rank") args.rank = std::stoll(value);
    else if (flag == "--threads") args.threads = std::stoi(value);
    else {
      std::fprintf(stderr, "usage: %s [--preset small|tiny] [--seq N] [--steps N] [--rank R] [--threads N]\n", argv[0]);
      return 2;
    }
  }
  const std::string dir = (std::filesystem::temp_directory_path() / ("shardlora_bench_" + std::to_string(getpid()))).string();
  const Result written = in_child([&] {
    Result result;
    for (const auto& [name, tensor] : nn::write_random_hf_model(dir, nn::model_preset(args.preset))) result.trainable += tensor.numel();
    return result;
  });
  const int64_t parameters = written.trainable;
  std::printf("%s preset: %.1fM parameters (bf16 on disk), seq %lld, LoRA r=%lld on all Linears, activation checkpointing, %d threads\n",
              args.preset.c_str(), parameters / 1e6, static_cast<long long>(args.seq), static_cast<long long>(args.rank), args.threads);
  const Result float_base = in_child([&] { return run_variant(dir, false, false, args); });
  const Result nf4_base = in_child([&] { return run_variant(dir, true, false, args); });
  const Result nf4_dora = in_child([&] { return run_variant(dir, true, true, args); });
  std::filesystem::remove_all(dir);
  std::printf("%-22s %12s %10s %14s %12s %16s\n", "base", "tokens/s", "step ms", "peak RSS MB", "first loss", "decode tokens/s");
  for (const auto& [name, r] : {std::pair<const char*, Result>{"float32 + LoRA", float_base}, {"NF4 (QLoRA) + LoRA", nf4_base},
                                {"NF4 + DoRA", nf4_dora}}) {
    std::printf("%-22s %12.1f %10.0f %14.0f %12.4f %16.1f\n", name, r.tokens_per_second, r.step_ms, r.peak_rss_mb, r.first_loss,
                r.decode_tokens_per_second);
  }
  std::printf("QLoRA / float: throughput %.2fx, peak RSS %.2fx (%lld trainable parameters)\n",
              nf4_base.tokens_per_second / float_base.tokens_per_second, nf4_base.peak_rss_mb / float_base.peak_rss_mb,
              static_cast<long long>(nf4_base.trainable));
  std::printf("DoRA / LoRA (NF4): throughput %.2fx, peak RSS %.2fx (%lld trainable parameters)\n",
              nf4_dora.tokens_per_second / nf4_base.tokens_per_second, nf4_dora.peak_rss_mb / nf4_base.peak_rss_mb,
              static_cast<long long>(nf4_dora.trainable));
  std::printf("DoRA / LoRA (NF4): decode %.2fx (%lld tokens after a %lld-token prompt, KV cache, adapters unmerged)\n",
              nf4_dora.decode_tokens_per_second / nf4_base.decode_tokens_per_second, static_cast<long long>(kDecodeTokens),
              static_cast<long long>(std::min<int64_t>(64, args.seq)));
  const bool valid = std::isfinite(float_base.first_loss) && std::isfinite(nf4_base.first_loss) &&
                     std::fabs(float_base.first_loss - nf4_base.first_loss) < 0.05 * std::fabs(float_base.first_loss) &&
                     std::fabs(nf4_dora.first_loss - nf4_base.first_loss) <= 1e-6 * std::fabs(nf4_base.first_loss);
  if (!valid) {
    std::fprintf(stderr, "FAILED: first losses disagree or are not finite\n");
    return 1;
  }
  return 0;
}
