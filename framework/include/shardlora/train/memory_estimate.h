// Memory per rank for a recipe, before anything is loaded: a table of what is held where
// (device or host), side by side for full fine-tuning (16-bit weights and fp32 AdamW),
// LoRA on a 16-bit base and QLoRA (the recipe's quantization), and whether it fits.
//
// Every row is a count of bytes from the model's shape, not a fit: 4-bit weights with their
// quantization state (split over the ranks with distributed.strategy shard, plus the
// all-gather buffer of two layers), float embeddings / norms / lm_head, adapters (fp32),
// their gradients, optimizer state by placement and bit width, activations of one
// micro-batch (with and without activation checkpointing; the CPU's eager attention keeps
// [heads, T, T] scores per document, counted for documents as long as a row; a GPU's flash
// attention none), the larger transient of one layer's eager attention and one chunk of the
// loss's logits, gradient buckets, and the runtime itself (libtorch and
// the process on the host; the CUDA context on a GPU).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "shardlora/nn/llama_config.h"
#include "shardlora/train/recipe.h"

namespace shardlora::train {

enum class Method { FullFinetune, Lora16, QLora };
const char* method_name(Method method);  // "full", "lora", "qlora"

struct MemoryRow {
  std::string name;
  int64_t device_bytes = 0;  // GPU memory (0 when training on the CPU: all of it is host)
  int64_t host_bytes = 0;
};

struct MemoryEstimate {
  Method method;
  std::vector<MemoryRow> rows;
  int64_t device_total() const;
  int64_t host_total() const;
  int64_t row(const std::string& name, bool device) const;  // 0 when absent
};

struct EstimateOptions {
  int64_t world_size = 1;
  bool on_gpu = true;  // false: the CPU trains, every byte is host memory
};

// Host bytes of a process that has loaded the runtime (libtorch, the executable) and run a
// training step on the CPU, before the model and data: measured on the CI machine (2 cores,
// 2 OpenMP threads; more threads keep more malloc arenas) as the peak RSS of training runs
// less the rows below.
inline constexpr int64_t kCpuRuntimeBytes = 190LL << 20;
// Peak activation memory over the saved tensors counted one by one: libtorch's composite
// ops (matmul on strided views, casts) keep copies beside them, and the allocator keeps freed
// blocks. Measured on libtorch 1.13 CPU from peak RSS at three sequence lengths (bench and
// docs/ARCHITECTURE.md); the per-position attention term matched the count and has none.
inline constexpr int64_t kActivationOverhead = 2;
// A CUDA context with cuBLAS workspaces.
inline constexpr int64_t kCudaContextBytes = 600LL << 20;

// The three methods for `recipe`, whose model is described by `config`.
std::vector<MemoryEstimate> estimate_memory(const Recipe& recipe, const nn::LlamaConfig& config, const EstimateOptions& options);

// Parameters of the model (embeddings, layers, norms, lm_head unless tied).
int64_t parameter_count(const nn::LlamaConfig& config);

}  // namespace shardlora::train
