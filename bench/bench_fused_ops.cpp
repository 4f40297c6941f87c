// The fused ops against the op chains they replace (nn::reference), same inputs, same run,
// on the CPU: forward and forward + backward milliseconds and their ratio, at Llama-3.1-8B
// shapes (2048 tokens, hidden 4096, intermediate 14336, 32 heads of 128, vocabulary 128256).
// Each fused result is checked against the chain before timing (exit 1 if they disagree).
// Then the memory of a training step with a 128k vocabulary at seq 2048 (a one-layer QLoRA
// model, fp32): peak RSS growth over the step with the chunked loss and with the chain's
// whole fp32 logits, each in its own process, against the fp32 logits and their gradient;
// and a step with trained token rows where they stand against the rows copied into the
// matrices (token_rows_step); and sliding-window attention in bands of the window against
// a dense [T, T] window mask (windowed_attention_step).
// Timings keep freed memory in the heap (mallopt) so that page faults of fresh outputs,
// which the chains take more of, do not decide the ratios; --fresh-pages times them with
// glibc's defaults instead (large blocks mapped anew per allocation, as in a CPU run). Each
// op and its chain run in turns, --iters rounds, and their medians are compared.
//
//   bench_fused_ops [--tokens 2048] [--dtype fp32|bf16] [--iters 3] [--threads N] [--skip-step] [--fresh-pages]
#include <malloc.h>
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "child_process.h"
#include "shardlora/nn/fused_ops.h"
#include "shardlora/nn/hf_loader.h"
#include "shardlora/nn/random_model.h"
#include "shardlora/tensor/dtypes.h"

using namespace shardlora;

namespace {

struct Args {
  int64_t tokens = 2048, iters = 3;
  torch::ScalarType dtype = torch::kFloat32;
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  bool step = true;
  bool fresh_pages = false;
};

struct Timing {
  double chain_forward_ms = 0, chain_step_ms = 0, fused_forward_ms = 0, fused_step_ms = 0, max_relative_error = 0;
};

// Median milliseconds per call of each of `calls`, timed in turns (one call of each per
// round, the order reversed every other round) after a warm-up call of each (first touch,
// allocator caches): so that the machine's drift during a run, which on a shared 2-core VM
// moves one libtorch matmul by 25%, falls on the op and its chain alike.
std::vector<double> median_ms_in_turns(int64_t iters, const std::vector<std::function<void()>>& calls) {
  for (const auto& call : calls) call();
  std::vector<std::vector<double>> ms(calls.size());
  for (int64_t round = 0; round < iters; ++round) {
    for (size_t k = 0; k < calls.size(); ++k) {
      const size_t which = round % 2 == 0 ? k : calls.size() - 1 - k;
      const auto start = std::chrono::steady_clock::now();
      calls[which]();
      ms[which].push_back(1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  std::vector<double> medians;
  for (auto& times : ms) {
    std::sort(times.begin(), times.end());
    const size_t n = times.size();
    medians.push_back(n % 2 == 1 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]));
  }
  return medians;
}

double relative_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  const double scale = expected.abs().max().item<double>();
  return (actual.to(torch::kFloat64) - expected.to(torch::kFloat64)).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

using Op = std::function<torch::Tensor(const std::vector<torch::Tensor>&)>;

// Forward alone, and forward + backward of an upstream gradient into every input; the fused
// op's value and gradients checked against the chain's first. in_place: the fused op rotates
// its input, so both get a fresh copy per call (timed in both).
Timing time_op(const Op& chain, const Op& fused, const std::vector<torch::Tensor>& inputs, bool in_place, const Args& args) {
  std::vector<torch::Tensor> leaves;
  for (const auto& input : inputs) leaves.push_back(input.detach().requires_grad_(true));
  const torch::Tensor upstream = torch::randn_like(chain(inputs));
  const auto step = [&](const Op& op) {
    for (auto& leaf : leaves) leaf.mutable_grad() = torch::Tensor();
    std::vector<torch::Tensor> used;
    for (const auto& leaf : leaves) used.push_back(in_place ? leaf * 1 : leaf);
    const torch::Tensor out = op(used);
    torch::autograd::backward({out}, {upstream});
    std::vector<torch::Tensor> result = {out.detach()};
    for (const auto& leaf : leaves) result.push_back(leaf.grad());
    return result;
  };
  Timing t;
  const auto expected = step(chain), actual = step(fused);
  for (size_t i = 0; i < expected.size(); ++i) t.max_relative_error = std::max(t.max_relative_error, relative_error(actual[i], expected[i]));
  // Timed on copies made outside the loop, so only the op (and its backward) is measured.
  const auto forward = [&](const Op& op) {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> copies;
    for (const auto& input : inputs) copies.push_back(input.clone());
    return [op, copies, in_place] {
      if (!in_place) return static_cast<void>(op(copies));
      op({copies[0].clone()});
    };
  };
  const auto forwards = median_ms_in_turns(args.iters, {forward(chain), forward(fused)});
  const auto steps = median_ms_in_turns(args.iters, {[&] { step(chain); }, [&] { step(fused); }});
  t.chain_forward_ms = forwards[0], t.fused_forward_ms = forwards[1];
  t.chain_step_ms = steps[0], t.fused_step_ms = steps[1];
  return t;
}

// The loss ops reduce to a scalar: timed as the trainer runs them (sum, then backward).
// matmul, when given, is the logits' product both sides take, timed alone in the same turns
// as the forwards (into matmul_ms).
Timing time_loss(const std::function<nn::SummedLoss(const torch::Tensor&)>& chain,
                 const std::function<nn::SummedLoss(const torch::Tensor&)>& fused, const torch::Tensor& hidden,
                 const std::function<void()>& matmul, double& matmul_ms, const Args& args) {
  const auto step = [&](const auto& loss) {
    const torch::Tensor leaf = hidden.detach().requires_grad_(true);
    const nn::SummedLoss summed = loss(leaf);
    summed.sum.backward();
    return std::make_pair(summed.sum.detach(), leaf.grad());
  };
  Timing t;
  const auto expected = step(chain), actual = step(fused);
  t.max_relative_error = std::max(relative_error(actual.first, expected.first), relative_error(actual.second, expected.second));
  std::vector<std::function<void()>> forwards = {[&] { torch::NoGradGuard g; chain(hidden); },
                                                 [&] { torch::NoGradGuard g; fused(hidden); }};
  if (matmul) forwards.push_back(matmul);
  const auto forward_ms = median_ms_in_turns(args.iters, forwards);
  const auto step_ms = median_ms_in_turns(args.iters, {[&] { step(chain); }, [&] { step(fused); }});
  t.chain_forward_ms = forward_ms[0], t.fused_forward_ms = forward_ms[1];
  if (matmul) matmul_ms = forward_ms[2];
  t.chain_step_ms = step_ms[0], t.fused_step_ms = step_ms[1];
  return t;
}

struct StepMemory {
  double grown_mib = 0, loss = 0;
};

int64_t current_rss_bytes() {
  long pages = 0, resident = 0;
  if (FILE* statm = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(statm, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(statm);
  }
  return static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE);
}

// Peak RSS growth, MiB, over one call of `step` (the process's first peak: run it first).
double peak_growth_mib(const std::function<void()>& step) {
  const int64_t before = current_rss_bytes();
  step();
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss * 1024 - before) / (1 << 20);
}

StepMemory training_step_memory(const std::string& dir, bool chunked, const Args& args) {
  at::set_num_threads(args.threads);
  omp_set_num_threads(args.threads);
  nn::ModelOptions options;
  options.compute_dtype = torch::kFloat32;
  options.lora = {.r = 16, .alpha = 32};
  nn::LlamaModel model = nn::load_hf_model(dir, options);
  model->train();
  torch::manual_seed(0);
  const torch::Tensor ids = torch::randint(model->config().vocab_size, {1, args.tokens}, torch::kInt64);
  const torch::Tensor inputs = ids.narrow(1, 0, args.tokens - 1), targets = ids.narrow(1, 1, args.tokens - 1).reshape({-1});
  nn::SummedLoss loss;
  const double grown_mib = peak_growth_mib([&] {
    const torch::Tensor hidden = model->hidden_states(inputs);
    const torch::Tensor rows = hidden.reshape({-1, hidden.size(-1)});
    loss = chunked ? nn::linear_cross_entropy(rows, model->lm_head(), targets)
                   : nn::reference::linear_cross_entropy(rows, model->lm_head().dense(hidden.scalar_type()), targets);
    loss.sum.backward();
  });
  return {grown_mib, loss.sum.item<double>()};
}

// Trained token rows (nn::VocabMatrix) at Llama 3's vocabulary: the embedding and the loss of
// a step through untied embed_tokens and lm_head with 8 new tokens' rows trained, fp32,
// either with the rows where they stand or through the matrices with the rows copied in (as
// PEFT's TrainableTokensLayer does, and this code did). Peak RSS growth over the first step,
// then milliseconds per step.
struct TokenRowsStep {
  double grown_mib = 0, step_ms = 0, loss = 0, row_gradient_norm = 0;
};
constexpr int64_t kTokenRowsVocab = 128256, kTokenRowsHidden = 1024, kNewTokens = 8;

TokenRowsStep token_rows_step(bool where_they_stand, const Args& args) {
  at::set_num_threads(args.threads);
  omp_set_num_threads(args.threads);
  const int64_t vocab = kTokenRowsVocab, hidden = kTokenRowsHidden;
  torch::manual_seed(0);
  // In place, so that no freed temporary raises the peak before the step.
  const torch::Tensor embed_weight = torch::randn({vocab, hidden}).mul_(0.02), head_weight = torch::randn({vocab, hidden}).mul_(0.02);
  const torch::Tensor token_ids = torch::arange(vocab - kNewTokens, vocab);
  const torch::Tensor slots = nn::token_slots(token_ids, vocab);
  const torch::Tensor embed_rows = torch::randn({kNewTokens, hidden}).requires_grad_(true);
  const torch::Tensor head_rows = torch::randn({kNewTokens, hidden}).mul_(0.02).requires_grad_(true);
  const nn::VocabMatrix embeddings{embed_weight, token_ids, embed_rows, slots}, head{head_weight, token_ids, head_rows, slots};
  torch::Tensor ids = torch::randint(vocab, {1, args.tokens}, torch::kInt64), targets = torch::randint(vocab, {args.tokens}, torch::kInt64);
  ids.index_put_({0, torch::arange(0, args.tokens, 16)}, vocab - 1);  // new tokens in and out
  targets.index_put_({torch::arange(1, args.tokens, 16)}, vocab - 2);
  const torch::Tensor context = torch::randn({1, args.tokens, hidden});  // the decoder's part
  nn::SummedLoss loss;
  const auto step = [&] {
    embed_rows.mutable_grad() = torch::Tensor();
    head_rows.mutable_grad() = torch::Tensor();
    const torch::Tensor embedded = where_they_stand ? nn::embed(embeddings, ids, torch::kFloat32)
                                                    : torch::embedding(embeddings.dense(torch::kFloat32), ids);
    const torch::Tensor h = (embedded + context).reshape({-1, hidden});
    loss = where_they_stand ? nn::linear_cross_entropy(h, head, targets)
                            : nn::linear_cross_entropy(h, head.dense(torch::kFloat32), targets);
    loss.sum.backward();
  };
  TokenRowsStep result;
  result.grown_mib = peak_growth_mib(step);
  result.loss = loss.sum.item<double>();
  result.row_gradient_norm = std::hypot(embed_rows.grad().norm().item<double>(), head_rows.grad().norm().item<double>());
  result.step_ms = median_ms_in_turns(args.iters, {step})[0];
  return result;
}

// Sliding-window attention at Gemma 3 1B's shape (4 heads, 1 KV head of 256, window 512),
// forward + backward: in bands of the window (nn::segmented_attention) against the dense
// [T, T] window mask this code took before (HF's eager attention on libtorch 1.13). Peak RSS
// growth over the first call, then milliseconds per call.
struct WindowedAttention {
  double grown_mib = 0, step_ms = 0;
  double out_sum = 0, out_abs_sum = 0, grad_q_sum = 0, grad_q_abs_sum = 0;  // checksums: tensors do not cross in_child
};
constexpr int64_t kWindowHeads = 4, kWindowKvHeads = 1, kWindowHeadDim = 256, kWindow = 512, kWindowSeq = 4096;

WindowedAttention windowed_attention_step(bool banded, const Args& args) {
  at::set_num_threads(args.threads);
  const int64_t seq = kWindowSeq, groups = kWindowHeads / kWindowKvHeads;
  torch::manual_seed(0);
  const torch::Tensor q = torch::randn({1, kWindowHeads, seq, kWindowHeadDim}).requires_grad_(true);
  const torch::Tensor k = torch::randn({1, kWindowKvHeads, seq, kWindowHeadDim}).requires_grad_(true);
  const torch::Tensor v = torch::randn({1, kWindowKvHeads, seq, kWindowHeadDim}).requires_grad_(true);
  const torch::Tensor segments = torch::tensor({int64_t{0}, int64_t{0}, seq}, torch::kInt64).view({1, 3});
  const torch::Tensor distance = torch::arange(seq).view({-1, 1}) - torch::arange(seq).view({1, -1});
  const torch::Tensor allowed = distance.ge(0).logical_and(distance.lt(kWindow)).view({1, 1, seq, seq});
  torch::Tensor out;
  const auto step = [&] {
    q.mutable_grad() = torch::Tensor();
    if (banded) {
      out = nn::segmented_attention(q, k, v, segments, kWindow);
    } else {
      const torch::Tensor scores = torch::matmul(q, k.repeat_interleave(groups, 1).transpose(2, 3)) / std::sqrt(double(kWindowHeadDim));
      const torch::Tensor weights = torch::softmax(scores.masked_fill(allowed.logical_not(), -INFINITY), -1, torch::kFloat32);
      out = torch::matmul(weights, v.repeat_interleave(groups, 1));
    }
    out.backward(torch::ones_like(out));
  };
  WindowedAttention result;
  result.grown_mib = peak_growth_mib(step);
  result.out_sum = out.sum().item<double>(), result.out_abs_sum = out.abs().sum().item<double>();
  result.grad_q_sum = q.grad().sum().item<double>(), result.grad_q_abs_sum = q.grad().abs().sum().item<double>();
  result.step_ms = median_ms_in_turns(args.iters, {step})[0];
  return result;
}

void print_row(const char* name, const Timing& t) {
  std::printf("%-28s %9.1f %9.1f %6.2fx   %9.1f %9.1f %6.2fx   %.1e\n", name, t.chain_forward_ms, t.fused_forward_ms,
              t.chain_forward_ms / t.fused_forward_ms, t.chain_step_ms, t.fused_step_ms, t.chain_step_ms / t.fused_step_ms,
              t.max_relative_error);
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--tokens") args.tokens = std::stoll(value());
    else if (flag == "--iters") args.iters = std::stoll(value());
    else if (flag == "--threads") args.threads = std::stoi(value());
    else if (flag == "--skip-step") args.step = false;
    else if (flag == "--fresh-pages") args.fresh_pages = true;
    else if (flag == "--dtype") {
      const auto dtype = scalar_type_from_name(value());
      if (!dtype || !is_float_type(*dtype)) throw std::runtime_error("--dtype: fp32, bf16 or fp16");
      args.dtype = *dtype;
    } else {
      std::fprintf(stderr, "usage: %s [--tokens N] [--dtype fp32|bf16] [--iters N] [--threads N] [--skip-step] [--fresh-pages]\n", argv[0]);
      return 2;
    }
  }
  if (args.iters < 1 || args.tokens < 2 || args.threads < 1) {
    std::fprintf(stderr, "%s: --iters and --threads take 1 or more, --tokens 2 or more\n", argv[0]);
    return 2;
  }
  const int64_t hidden = 4096, intermediate = 14336, heads = 32, head_dim = 128, vocab = 128256;
  std::printf("fused ops vs the op chains they replace, CPU, %s, %lld tokens, %d threads, %lld rounds (median ms per call, chain and fused in turns), %s\n",
              torch_dtype_name(args.dtype).c_str(), static_cast<long long>(args.tokens), args.threads,
              static_cast<long long>(args.iters), args.fresh_pages ? "fresh pages per allocation" : "freed memory kept in the heap");
  struct Timings {
    Timing rms, swiglu, rope, loss;
    // The logits' matmul alone, which both sides of the loss row take. Only in fp32: libtorch's
    // CPU bf16 matmul over the whole [T, V] is slower than the same product chunk by chunk.
    double loss_matmul_ms = 0;
  };
  const Timings timings = in_child([&] {
    // Freed tensors stay in the heap (as a caching allocator keeps them on a GPU), so both
    // sides are timed computing, not faulting in fresh pages for every output.
    if (!args.fresh_pages) {
      mallopt(M_MMAP_THRESHOLD, 1 << 30);
      mallopt(M_TRIM_THRESHOLD, 1 << 30);
    }
    at::set_num_threads(args.threads);
    omp_set_num_threads(args.threads);  // the fused CPU kernels' threads
    torch::manual_seed(0);
    const auto options = torch::TensorOptions().dtype(args.dtype);
    const int64_t n = args.tokens;
    Timings t;
    t.rms = time_op([](const auto& x) { return nn::reference::rms_norm(x[0], x[1], 1e-5); },
                    [](const auto& x) { return nn::rms_norm(x[0], x[1], 1e-5); },
                    {torch::randn({1, n, hidden}, options), torch::randn({hidden}, options)}, false, args);
    t.swiglu = time_op([](const auto& x) { return nn::reference::swiglu(x[0], x[1]); },
                       [](const auto& x) { return nn::swiglu(x[0], x[1]); },
                       {torch::randn({1, n, intermediate}, options) * 3, torch::randn({1, n, intermediate}, options)}, false, args);
    const torch::Tensor angles = torch::rand({1, n, head_dim / 2}) * 100;
    const torch::Tensor cos = angles.cos().to(args.dtype), sin = angles.sin().to(args.dtype);
    t.rope = time_op([&](const auto& x) { return nn::reference::apply_rope(x[0], cos, sin, heads); },
                     [&](const auto& x) { return nn::apply_rope(x[0], cos, sin, heads); },
                     {torch::randn({1, n, heads * head_dim}, options)}, true, args);
    // Loss: a narrow hidden size keeps the two matmuls (the same in both) from dominating.
    const int64_t loss_hidden = 64;
    const torch::Tensor weight = torch::randn({vocab, loss_hidden}, options) * 0.3;
    const torch::Tensor targets = torch::randint(vocab, {n}, torch::kInt64), loss_input = torch::randn({n, loss_hidden}, options);
    // (With fresh pages the lone product faults in its whole [T, V] output, which the fused
    // side, with one buffer for its chunks, does not: no longer the same on both sides.)
    std::function<void()> matmul;
    if (args.dtype == torch::kFloat32 && !args.fresh_pages) matmul = [&] { torch::matmul(loss_input, weight.t()); };
    t.loss = time_loss([&](const torch::Tensor& h) { return nn::reference::linear_cross_entropy(h, weight, targets); },
                       [&](const torch::Tensor& h) { return nn::linear_cross_entropy(h, weight, targets); }, loss_input,
                       matmul, t.loss_matmul_ms, args);
    return t;
  });
  std::printf("%-28s %9s %9s %7s   %9s %9s %7s   %s\n", "op", "chain fwd", "fused", "ratio", "chain f+b", "fused", "ratio",
              "max rel err");
  print_row("rmsnorm [T, 4096]", timings.rms);
  print_row("swiglu [T, 14336]", timings.swiglu);
  print_row("rope q [T, 32 x 128]", timings.rope);
  print_row("linear+CE [T, 64] x 128256", timings.loss);
  const double matmul_ms = timings.loss_matmul_ms;
  if (matmul_ms > 0)
    std::printf("  of which the logits' matmul, the same on both sides: %.1f ms; the forward without it: %.1f vs %.1f, %.2fx\n",
                matmul_ms, timings.loss.chain_forward_ms - matmul_ms, timings.loss.fused_forward_ms - matmul_ms,
                (timings.loss.chain_forward_ms - matmul_ms) / (timings.loss.fused_forward_ms - matmul_ms));
  const double tolerance = args.dtype == torch::kFloat32 ? 1e-4 : 5e-2;
  bool valid = true;
  for (const Timing* t : {&timings.rms, &timings.swiglu, &timings.rope, &timings.loss}) valid = valid && t->max_relative_error < tolerance;

  if (args.step) {
    const std::string dir = (std::filesystem::temp_directory_path() / ("shardlora_bench_fused_" + std::to_string(getpid()))).string();
    in_child([&] {
      nn::RandomModelSpec spec;
      spec.vocab = vocab;
      spec.hidden = 256, spec.intermediate = 512, spec.layers = 1, spec.heads = 4, spec.kv_heads = 2;
      spec.max_positions = std::max<int64_t>(2048, args.tokens);
      spec.dtype = torch::kFloat32;
      nn::write_random_hf_model(dir, spec);
      return 0;
    });
    const StepMemory chunked = in_child([&] { return training_step_memory(dir, true, args); });
    const StepMemory whole = in_child([&] { return training_step_memory(dir, false, args); });
    std::filesystem::remove_all(dir);
    const double logits_and_grad_mib = 2.0 * static_cast<double>(args.tokens - 1) * vocab * 4 / (1 << 20);
    std::printf("\ntraining step, vocabulary %lld, seq %lld, 1-layer QLoRA fp32 model: peak RSS growth over the step\n",
                static_cast<long long>(vocab), static_cast<long long>(args.tokens));
    std::printf("  whole fp32 logits (op chain) %8.0f MiB   loss %.6f\n", whole.grown_mib, whole.loss);
    std::printf("  chunked loss (fused)         %8.0f MiB   loss %.6f\n", chunked.grown_mib, chunked.loss);
    std::printf("  saved %.0f MiB = %.2fx the fp32 logits + their gradient (%.0f MiB); chunked / whole peak %.2fx\n",
                whole.grown_mib - chunked.grown_mib, (whole.grown_mib - chunked.grown_mib) / logits_and_grad_mib,
                logits_and_grad_mib, chunked.grown_mib / whole.grown_mib);
    valid = valid && std::fabs(chunked.loss - whole.loss) <= 1e-4 * std::fabs(whole.loss);

    const TokenRowsStep copied = in_child([&] { return token_rows_step(false, args); });
    const TokenRowsStep standing = in_child([&] { return token_rows_step(true, args); });
    const double matrix_mib = static_cast<double>(kTokenRowsVocab) * kTokenRowsHidden * 4 / (1 << 20);
    std::printf("\ntrained token rows: %lld new tokens, vocabulary %lld, hidden %lld, seq %lld, fp32: embedding + loss step\n",
                static_cast<long long>(kNewTokens), static_cast<long long>(kTokenRowsVocab),
                static_cast<long long>(kTokenRowsHidden), static_cast<long long>(args.tokens));
    std::printf("  rows copied into the matrices (PEFT) %8.0f MiB %9.1f ms   loss %.6f\n", copied.grown_mib, copied.step_ms, copied.loss);
    std::printf("  rows where they stand                %8.0f MiB %9.1f ms   loss %.6f\n", standing.grown_mib, standing.step_ms,
                standing.loss);
    std::printf("  saved %.0f MiB = %.2fx one fp32 [vocab, hidden] matrix (%.0f MiB); peak %.2fx, step %.2fx faster\n",
                copied.grown_mib - standing.grown_mib, (copied.grown_mib - standing.grown_mib) / matrix_mib, matrix_mib,
                standing.grown_mib / copied.grown_mib, copied.step_ms / standing.step_ms);
    valid = valid && std::fabs(standing.loss - copied.loss) <= 1e-4 * std::fabs(copied.loss) &&
            std::fabs(standing.row_gradient_norm - copied.row_gradient_norm) <= 1e-4 * copied.row_gradient_norm;

    const WindowedAttention dense = in_child([&] { return windowed_attention_step(false, args); });
    const WindowedAttention bands = in_child([&] { return windowed_attention_step(true, args); });
    std::printf("\nsliding-window attention, Gemma 3 1B shape (%lld heads, %lld KV head of %lld), window %lld, seq %lld, fp32: "
                "forward + backward\n",
                static_cast<long long>(kWindowHeads), static_cast<long long>(kWindowKvHeads), static_cast<long long>(kWindowHeadDim),
                static_cast<long long>(kWindow), static_cast<long long>(kWindowSeq));
    std::printf("  dense [T, T] window mask (before) %8.0f MiB %9.1f ms\n", dense.grown_mib, dense.step_ms);
    std::printf("  bands of the window               %8.0f MiB %9.1f ms\n", bands.grown_mib, bands.step_ms);
    std::printf("  peak %.2fx, %.2fx faster\n", bands.grown_mib / dense.grown_mib, dense.step_ms / bands.step_ms);
    const auto agree = [](double a, double b, double scale) { return std::fabs(a - b) <= 1e-4 * scale; };
    valid = valid && agree(bands.out_sum, dense.out_sum, dense.out_abs_sum) && agree(bands.grad_q_sum, dense.grad_q_sum, dense.grad_q_abs_sum);
  }
  if (!valid) {
    std::fprintf(stderr, "FAILED: a fused result disagrees with its op chain\n");
    return 1;
  }
  return 0;
}
