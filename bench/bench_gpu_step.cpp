// A QLoRA training step on one GPU at real model sizes, with random weights made on the
// device (nothing downloaded or written): the Llama-3.1-8B config, and a stack of
// Llama-3.1-70B decoder layers for the per-layer cost. NF4 + double quant base, LoRA r=16 on
// every Linear, bf16, AdamW (state on the device), seq 2048, one document per row, micro-
// batch 1 and 2, activation checkpointing on and off. Prints tokens/s, MFU (the base's
// FLOPs: 4N per token, 6N with recomputation, plus the adapters' 6 per parameter), peak
// allocated and reserved CUDA memory, where the step's time goes (each part timed alone at
// the step's shapes), and the longest sequence that fits (doubling until out of memory).
// Writes the figures as JSON (--json FILE) for scripts/gpu-bench to set beside the peer's
// (bench/peer_transformers_peft.py). The first step's loss must be finite, else exit 1.
// `--device cpu --model tiny` runs the same code on a tiny model on the CPU (a test runs it,
// so the GPU run, when one comes, does not stop on a slip; no memory figures, MFU 0).
//
//   bench_gpu_step [--model 8b|70b-layers|tiny] [--device cuda|cpu] [--layers N] [--seq 2048]
//                  [--steps 3] [--max-seq 65536] [--json FILE]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/cuda.h>

#include "shardlora/io/durable_file.h"
#include "shardlora/kernels/device.h"
#include "shardlora/nn/fused_ops.h"
#include "shardlora/nn/llama.h"
#include "shardlora/optim/adamw.h"
#include "shardlora/quant/quant_state.h"
#ifdef SHARDLORA_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

using namespace shardlora;

namespace {

struct Args {
  std::string model = "8b", device = "cuda";
  int64_t layers = 0;  // 0: the config's (8b), 16 for the 70B stack
  int64_t seq = 2048, steps = 3, max_seq = 65536;
  std::string json;
};

nn::LlamaConfig model_config(const Args& args) {
  const bool big = args.model == "70b-layers";
  if (args.model == "tiny") {
    return nn::parse_llama_config({{"model_type", "llama"}, {"vocab_size", 512}, {"hidden_size", 64}, {"intermediate_size", 128},
                                   {"num_hidden_layers", args.layers ? args.layers : 2}, {"num_attention_heads", 4},
                                   {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-5}, {"max_position_embeddings", 131072}},
                                  "tiny Llama");
  }
  nlohmann::json c = {{"model_type", "llama"}, {"vocab_size", 128256}, {"hidden_size", big ? 8192 : 4096},
                      {"intermediate_size", big ? 28672 : 14336}, {"num_hidden_layers", args.layers ? args.layers : big ? 16 : 32},
                      {"num_attention_heads", big ? 64 : 32}, {"num_key_value_heads", 8}, {"rms_norm_eps", 1e-5},
                      {"rope_theta", 500000.0}, {"max_position_embeddings", 131072}, {"tie_word_embeddings", false},
                      {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                        {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}}}};
  return nn::parse_llama_config(c, "Llama-3.1-" + std::string(big ? "70B layers" : "8B"));
}

// Weights by HF name, drawn on the device when asked for (N(0, 0.02), norms 1): the model
// quantizes each Linear as it loads, so one float weight exists at a time.
quant::TensorLookup random_weights_on(const nn::LlamaConfig& c, torch::Device device) {
  return [c, device](const std::string& name) -> std::optional<torch::Tensor> {
    const auto options = torch::TensorOptions().dtype(torch::kBFloat16).device(device);
    const auto ends = [&](const std::string& suffix) {
      return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    std::vector<int64_t> shape;
    if (name == "model.embed_tokens.weight" || name == "lm_head.weight") shape = {c.vocab_size, c.hidden_size};
    else if (ends("norm.weight")) return torch::ones({c.hidden_size}, options);
    else if (ends("q_proj.weight")) shape = {c.q_size(), c.hidden_size};
    else if (ends("k_proj.weight") || ends("v_proj.weight")) shape = {c.kv_size(), c.hidden_size};
    else if (ends("o_proj.weight")) shape = {c.hidden_size, c.q_size()};
    else if (ends("gate_proj.weight") || ends("up_proj.weight")) shape = {c.intermediate_size, c.hidden_size};
    else if (ends("down_proj.weight")) shape = {c.hidden_size, c.intermediate_size};
    else return std::nullopt;  // biases, bnb quant-state tensors: absent
    return torch::randn(shape, options) * 0.02;
  };
}

struct Memory {
  double allocated_gib = 0, reserved_gib = 0;
};

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

void reset_peak_memory(const torch::Device& device) {
#ifdef SHARDLORA_TORCH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(0);
#endif
}

Memory peak_memory(const torch::Device& device) {
#ifdef SHARDLORA_TORCH_CUDA
  if (!device.is_cuda()) return {};
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
  // Index 0 is StatType::AGGREGATE (its namespace moved between libtorch versions).
  return {stats.allocated_bytes[0].peak / double(1 << 30), stats.reserved_bytes[0].peak / double(1 << 30)};
#else
  return {};
#endif
}

void free_cached_memory(const torch::Device& device) {
#ifdef SHARDLORA_TORCH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

double seconds_per_call(const torch::Device& device, int64_t iters, const std::function<void()>& call) {
  call();
  synchronize(device);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iters; ++i) call();
  synchronize(device);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / static_cast<double>(iters);
}

struct Trainable {
  nn::LlamaModel model;
  std::unique_ptr<optim::AdamW> optimizer;
};

// One optimizer step on `ids` [micro_batch, seq]: the trainer's loss (chunked), backward,
// AdamW; returns the loss summed over the targets.
torch::Tensor train_step(Trainable& t, const torch::Tensor& ids) {
  t.optimizer->zero_grad();
  const torch::Tensor inputs = ids.narrow(1, 0, ids.size(1) - 1), targets = ids.narrow(1, 1, ids.size(1) - 1);
  const torch::Tensor hidden = t.model->hidden_states(inputs);
  const nn::SummedLoss loss =
      nn::linear_cross_entropy(hidden.reshape({-1, hidden.size(-1)}), t.model->lm_head(), targets.reshape({-1}).to(hidden.device()));
  loss.sum.backward();
  t.optimizer->step();
  return loss.sum.detach();
}

struct Config {
  int64_t micro_batch;
  bool checkpointing;
};

// Parameters of the base the FLOPs count: every decoder Linear and lm_head.
int64_t base_matmul_parameters(const nn::LlamaConfig& c) {
  const int64_t per_layer = c.hidden_size * (2 * c.q_size() + 2 * c.kv_size()) + 3 * c.hidden_size * c.intermediate_size;
  return per_layer * c.num_hidden_layers + c.vocab_size * c.hidden_size;
}

double peak_bf16_flops(const std::string& device) {
  // Dense bf16 tensor-core peaks (NVIDIA datasheets, SXM): H100 and H200 989 TFLOPS, A100 312.
  if (device.find("H100") != std::string::npos || device.find("H200") != std::string::npos) return 989e12;
  if (device.find("A100") != std::string::npos) return 312e12;
  return 0;
}

// Each part of a step timed alone at the step's shapes, in seconds per step.
nlohmann::json time_parts(Trainable& t, const nn::LlamaConfig& c, const Config& config, int64_t seq) {
  torch::NoGradGuard no_grad;
  const torch::Device device = t.model->parameters().front().device();
  const auto timed = [&](const std::function<void()>& call) { return seconds_per_call(device, 3, call); };
  const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16).device(device);
  const int64_t tokens = config.micro_batch * (seq - 1), layers = c.num_hidden_layers;
  const double passes = config.checkpointing ? 3 : 2;  // forward, backward (dequantize and matmul again), recompute
  // Dequantize and the base matmuls of one layer's seven Linears.
  std::vector<const quant::QuantState*> states;
  for (size_t i = 0; i < 7; ++i) {
    states.push_back(&dynamic_cast<const nn::QuantizedLinear&>(t.model->linears()[i].second->base()).state());
  }
  const double dequantize = timed([&] {
    for (const auto* state : states) quant::dequantize(*state, torch::kBFloat16);
  });
  std::vector<torch::Tensor> weights, inputs;
  for (const auto* state : states) {
    weights.push_back(quant::dequantize(*state, torch::kBFloat16));
    inputs.push_back(torch::randn({tokens, state->shape[1]}, bf16));
  }
  const double matmuls = timed([&] {
    for (size_t i = 0; i < weights.size(); ++i) torch::matmul(inputs[i], weights[i].t());
  });
  weights.clear();
  inputs.clear();
  const torch::Tensor q = torch::randn({config.micro_batch, c.num_attention_heads, seq, c.head_dim}, bf16).requires_grad_(true);
  const torch::Tensor kv = torch::randn({config.micro_batch, c.num_key_value_heads, seq, c.head_dim}, bf16);
  const torch::Tensor k = kv.clone().requires_grad_(true), v = kv.clone().requires_grad_(true);
  const torch::Tensor segments = torch::tensor({int64_t{0}, int64_t{0}, seq}, torch::kInt64).view({1, 3}).repeat({config.micro_batch, 1});
  for (int64_t row = 0; row < config.micro_batch; ++row) segments[row][0] = row;
  const double attention = timed([&] {
    torch::AutoGradMode grad(true);
    const torch::Tensor out = nn::segmented_attention(q, k, v, segments);
    out.backward(torch::ones_like(out));
  }) + (config.checkpointing ? timed([&] { nn::segmented_attention(q, k, v, segments); }) : 0.0);
  const torch::Tensor hidden = torch::randn({tokens, c.hidden_size}, bf16).requires_grad_(true);
  const torch::Tensor targets = torch::randint(c.vocab_size, {tokens}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  const double loss = timed([&] {
    torch::AutoGradMode grad(true);
    nn::linear_cross_entropy(hidden, t.model->lm_head(), targets).sum.backward();
  });
  const double optimizer = timed([&] { t.optimizer->step(); });
  return {{"dequantize", dequantize * passes * layers}, {"base matmuls", matmuls * passes * layers},
          {"attention", attention * layers}, {"loss", loss}, {"optimizer", optimizer}};
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s needs a value\n", flag.c_str());
      return 2;
    }
    const std::string value = argv[++i];
    if (flag == "--model") args.model = value;
    else if (flag == "--device") args.device = value;
    else if (flag == "--layers") args.layers = std::stoll(value);
    else if (flag == "--seq") args.seq = std::stoll(value);
    else if (flag == "--steps") args.steps = std::stoll(value);
    else if (flag == "--max-seq") args.max_seq = std::stoll(value);
    else if (flag == "--json") args.json = value;
    else {
      std::fprintf(stderr, "usage: %s [--model 8b|70b-layers|tiny] [--device cuda|cpu] [--layers N] [--seq N] [--steps N] [--max-seq N] [--json FILE]\n", argv[0]);
      return 2;
    }
  }
  if (args.model != "8b" && args.model != "70b-layers" && args.model != "tiny") {
    std::fprintf(stderr, "--model must be 8b, 70b-layers or tiny, not '%s'\n", args.model.c_str());
    return 2;
  }
  if (args.device != "cuda" && args.device != "cpu") {
    std::fprintf(stderr, "--device must be cuda or cpu, not '%s'\n", args.device.c_str());
    return 2;
  }
  const bool on_gpu = args.device == "cuda";
  if (on_gpu && !torch::cuda::is_available()) {
    std::printf("bench_gpu_step: skipped, no CUDA device (or a libtorch without CUDA)\n");
    return 0;
  }
  const nn::LlamaConfig c = model_config(args);
  const std::string device = on_gpu ? kernels::cuda_device_description(0) : "CPU";
  nn::ModelOptions options;
  options.compute_dtype = torch::kBFloat16;
  options.device = on_gpu ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  options.lora = {.r = 16, .alpha = 32};
  const auto load_start = std::chrono::steady_clock::now();
  Trainable t{nn::LlamaModel(c, random_weights_on(c, options.device), options, "random " + args.model), nullptr};
  t.model->train();
  optim::AdamWOptions adamw;
  adamw.lr = 1e-4;
  adamw.placement = optim::Placement::Device;
  std::vector<torch::Tensor> params = t.model->parameters();
  t.optimizer = std::make_unique<optim::AdamW>(params, adamw);
  int64_t adapter_params = 0;
  for (const auto& p : params) adapter_params += p.numel();
  std::printf("%s: %s, %lld layers, NF4 + double quant base, LoRA r=16 on every Linear (%.1fM adapter parameters), bf16, AdamW on the "
              "device; built in %.0f s\n",
              device.c_str(), args.model.c_str(), static_cast<long long>(c.num_hidden_layers), adapter_params / 1e6,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count());

  const double flops_peak = peak_bf16_flops(device);
  const int64_t base_params = base_matmul_parameters(c);
  nlohmann::json results = {{"device", device},   {"model", args.model}, {"layers", c.num_hidden_layers},
                             {"max_seq", args.max_seq}, {"runs", nlohmann::json::array()}};
  // Written after every figure: what was measured survives scripts/gpu-bench's time limits.
  const auto save = [&] {
    if (!args.json.empty()) io::write_file_atomically(args.json, results.dump(2) + "\n");
  };
  std::printf("%-4s %-6s %10s %7s %10s %10s   %s\n", "mb", "ckpt", "tokens/s", "MFU", "peak alloc", "reserved", "time per step (s)");
  bool valid = true;
  for (const Config config : {Config{1, true}, Config{1, false}, Config{2, true}, Config{2, false}}) {
    t.model->set_activation_checkpointing(config.checkpointing);
    torch::manual_seed(0);
    const torch::Tensor ids = torch::randint(c.vocab_size, {config.micro_batch, args.seq}, torch::kInt64).to(options.device);
    free_cached_memory(options.device);
    reset_peak_memory(options.device);
    const double first_loss = train_step(t, ids).item<double>();
    valid = valid && std::isfinite(first_loss);
    const double step = seconds_per_call(options.device, args.steps, [&] { train_step(t, ids); });
    const Memory memory = peak_memory(options.device);
    const double tokens_per_second = config.micro_batch * (args.seq - 1) / step;
    const double flops_per_token = (config.checkpointing ? 6.0 : 4.0) * base_params + 6.0 * adapter_params;
    const double mfu = flops_peak > 0 ? tokens_per_second * flops_per_token / flops_peak : 0;
    const nlohmann::json parts = time_parts(t, c, config, args.seq);
    std::string breakdown;
    double accounted = 0;
    for (const auto& [name, seconds] : parts.items()) {
      breakdown += name + " " + std::to_string(seconds.get<double>()).substr(0, 5) + ", ";
      accounted += seconds.get<double>();
    }
    breakdown += "other " + std::to_string(step - accounted).substr(0, 5);
    std::printf("%-4lld %-6s %10.0f %6.1f%% %8.1f GiB %6.1f GiB   %.3f: %s\n", static_cast<long long>(config.micro_batch),
                config.checkpointing ? "on" : "off", tokens_per_second, 100 * mfu, memory.allocated_gib, memory.reserved_gib, step,
                breakdown.c_str());
    results["runs"].push_back({{"micro_batch", config.micro_batch}, {"checkpointing", config.checkpointing}, {"tokens_per_second", tokens_per_second},
                               {"mfu", mfu}, {"peak_allocated_gib", memory.allocated_gib}, {"peak_reserved_gib", memory.reserved_gib},
                               {"step_seconds", step}, {"parts", parts}, {"first_loss", first_loss}});
    save();
  }
  // The longest sequence one row fits, with checkpointing.
  t.model->set_activation_checkpointing(true);
  int64_t longest = 0;
  for (int64_t seq = args.seq; seq <= args.max_seq; seq *= 2) {
    try {
      free_cached_memory(options.device);
      const torch::Tensor ids = torch::randint(c.vocab_size, {1, seq}, torch::kInt64).to(options.device);
      train_step(t, ids);
      synchronize(options.device);
      longest = seq;
      results["longest_seq"] = longest;
      save();
    } catch (const c10::Error& error) {  // out of memory (c10::OutOfMemoryError on libtorch 2.x)
      std::printf("seq %lld: %s\n", static_cast<long long>(seq), std::string(error.what()).substr(0, 80).c_str());
      break;
    }
  }
  std::printf("longest sequence that fits (micro-batch 1, checkpointing): %lld tokens%s\n", static_cast<long long>(longest),
              longest == args.max_seq ? " (the limit tried)" : "");
  results["longest_seq"] = longest;
  save();
  if (!valid) {
    std::fprintf(stderr, "FAILED: a first loss is not finite\n");
    return 1;
  }
  return 0;
}
