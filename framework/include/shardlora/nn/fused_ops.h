// The decoder's elementwise and loss ops as autograd functions over the fused kernels
// (kernels/rms_norm.h, rope.h, swiglu.h, cross_entropy.h) for float32, float16 and bfloat16
// on the CPU and CUDA; other dtypes (float64: the parity tests) take the op chains in
// `reference`, which are the ops these replace and what their tests compare against.
#pragma once

#include <torch/torch.h>

#include "shardlora/nn/vocab_matrix.h"

namespace shardlora::nn {

// Hugging Face's LlamaRMSNorm over the last dimension: normalize in float32, cast back,
// scale. x and weight share a dtype.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// silu(gate) * up.
torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up);

// Rotary embedding (rotate-half) of x [batch, seq, heads * head_dim] with cos / sin
// [batch, seq, head_dim / 2] in x's dtype. The fused path rotates x in place (it must not be
// a leaf, nor needed by another op's backward) and returns it.
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads);

// Cross-entropy of the logits hidden @ weight^T against targets, summed over the rows whose
// target is not -100, and how many those are (an int64 scalar on the device: nothing waits
// for it). The fused path computes the logits `chunk_rows` rows at a time (0:
// loss_chunk_rows) and keeps only their gradient with respect
// to hidden (and weight, when it requires one): the [rows, vocab] logits never exist whole.
// The matrix (a plain weight tensor, or a VocabMatrix whose trained rows take part where they
// stand: their gradient is [n, hidden]) is cast to hidden's dtype.
struct SummedLoss {
  torch::Tensor sum;    // float32 scalar
  torch::Tensor count;  // int64 scalar
};
SummedLoss linear_cross_entropy(const torch::Tensor& hidden, const VocabMatrix& matrix, const torch::Tensor& targets,
                                int64_t chunk_rows = 0);

// Rows per chunk when chunk_rows is 0: Liger's choice, a power of two near rows / ceil(vocab /
// hidden), so a chunk holds about as many logits as all rows hold hidden values, but at least
// kMinLossChunkRows (each chunk reads the whole lm_head: fewer rows would make the products
// memory-bound; Llama-3's 128k vocabulary then takes 4 chunks of 512 rows at 2,048 tokens).
constexpr int64_t kMinLossChunkRows = 512;
int64_t loss_chunk_rows(int64_t rows, int64_t hidden, int64_t vocab);

// Whether the fused kernels take tensors of this dtype and device.
bool fused_ops_apply(const torch::Tensor& x);

namespace reference {
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up);
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads);
SummedLoss linear_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight, const torch::Tensor& targets);
}  // namespace reference

}  // namespace shardlora::nn
