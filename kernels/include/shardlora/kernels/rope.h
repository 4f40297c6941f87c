// Rotary position embedding in the rotate-half layout (Hugging Face's apply_rotary_pos_emb),
// applied in place to x [tokens, heads, head_dim]: with half = head_dim / 2 and the tables
// cos, sin [tokens, half] of token t (the same for every head; the llama3 or other scaling is
// in the tables),
//   x1 = x[..., :half], x2 = x[..., half:]
//   forward:  x1' = x1 * c - x2 * s,  x2' = x2 * c + x1 * s
//   backward: the same with -s (the rotation's transpose), applied to the gradient
// computed in fp32 and rounded once. x and the tables share one dtype (F32, F16, BF16; HF
// casts cos / sin to the compute dtype too).
#pragma once

#include <cstdint>

#include "shardlora/kernels/device.h"
#include "shardlora/kernels/dtype.h"

namespace shardlora::kernels {

struct RopeShape {
  int64_t tokens = 0, heads = 0, head_dim = 0;  // head_dim even
};

enum class RopeDirection { Forward, Backward };

void rope_apply(void* x, const void* cos, const void* sin, RopeShape shape, RopeDirection direction, DType dtype,
                Device device, Stream stream = nullptr);

// Scalar oracle. Always built.
void rope_apply_ref(void* x, const void* cos, const void* sin, RopeShape shape, RopeDirection direction, DType dtype);

}  // namespace shardlora::kernels
