// Sliding-window causal attention through FlashAttention's window arguments
// (aten::_flash_attention_forward with window_size_left / right, libtorch 2.5 and later, on a
// GPU): no mask in memory and no copies of K / V heads for grouped queries. Called by name
// through the dispatcher (shardlora/tensor/named_op_call.h): the operator's C++ signature
// changes from release to release, and libtorch 1.13 has none.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace shardlora::nn {

// Whether flash_window_attention takes q [B, H, T, D]: on a CUDA device of sm_80 or newer,
// fp16 or bf16, D a multiple of 8 up to 256, and this libtorch's flash operator has the
// window arguments forward and backward.
bool flash_window_attention_applies(const at::Tensor& q);

// q [B, H, T, D] over k, v [B, KV, T, D] (KV dividing H), query i over keys j with
// i - window < j <= i, scores scaled by D^-1/2; differentiable in q, k and v.
at::Tensor flash_window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t window);

}  // namespace shardlora::nn
