// Cross-entropy of rows of logits z [rows, vocab] against target ids, and its gradient
// written over the logits (so a chunk of logits needs no second buffer, as in Liger's
// fused linear cross-entropy). A row is read once for its loss, in groups of 64 logits (the
// last may be shorter) with a running max, as in online softmax:
//   m_g = max(m_{g-1}, max of group g),  m_{-1} = -inf
//   lane sums s_j *= e^(m_{g-1} - m_g),  then s_(c % 8) += e^(z[r,c] - m_g) for c in group g
//   (against 0, not m_g, while m_g is -inf), m = the last m_g,  S = the lanes combined,
//   loss[r] = (m + ln S) - z[r,t]
//   z[r,c] <- round(e^(z[r,c] - m) * (1 / S) - [c == t])        (d loss[r] / d z[r,c])
// in fp32, with float_math.h's exp_approx and lane order: the CPU kernel equals the
// reference bit for bit. The CUDA kernel takes the row's max first and its own expf: the same
// loss and gradient within fp32 rounding. A row whose target is ignore_index gets loss 0 and gradient 0; a
// target outside [0, vocab) gets a NaN loss and gradient, which the trainer reports, never an
// out-of-bounds read. logits are F32, F16 or BF16; losses fp32 [rows].
#pragma once

#include <cstdint>

#include "shardlora/kernels/device.h"
#include "shardlora/kernels/dtype.h"

namespace shardlora::kernels {

struct CrossEntropyShape {
  int64_t rows = 0, vocab = 0;
};

// write_gradient false leaves the logits as they are (evaluation).
void cross_entropy_rows(void* logits, const int64_t* targets, float* losses, CrossEntropyShape shape, int64_t ignore_index,
                        bool write_gradient, DType dtype, Device device, Stream stream = nullptr);

// Scalar oracle. Always built.
void cross_entropy_rows_ref(void* logits, const int64_t* targets, float* losses, CrossEntropyShape shape,
                            int64_t ignore_index, bool write_gradient, DType dtype);

}  // namespace shardlora::kernels
