#include "shardlora/nn/fused_ops.h"

#include <algorithm>

#include "shardlora/kernels/check.h"
#include "shardlora/kernels/cross_entropy.h"
#include "shardlora/kernels/rms_norm.h"
#include "shardlora/kernels/rope.h"
#include "shardlora/kernels/swiglu.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::nn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr int64_t kIgnoreIndex = -100;

kernels::DType dtype_of(const torch::Tensor& t) { return to_kernels_dtype(t.scalar_type()); }

struct RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input, const torch::Tensor& weight, double eps) {
    const torch::Tensor x = input.contiguous(), w = weight.contiguous();
    const kernels::RmsNormShape shape{x.numel() / x.size(-1), x.size(-1)};
    torch::Tensor y = torch::empty_like(x);
    torch::Tensor inv_rms = torch::empty({shape.rows}, x.options().dtype(torch::kFloat32));
    kernels::rms_norm_forward(x.data_ptr(), w.data_ptr(), y.data_ptr(), inv_rms.data_ptr<float>(), shape,
                              static_cast<float>(eps), dtype_of(x), kernel_device(x));
    ctx->save_for_backward({x, w, inv_rms});
    return y;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &w = saved[1], &inv_rms = saved[2];
    const torch::Tensor dy = grad_outputs[0].contiguous();
    const kernels::RmsNormShape shape{x.numel() / x.size(-1), x.size(-1)};
    torch::Tensor dx = torch::empty_like(x), dw;
    const bool weight_grad = ctx->needs_input_grad(1);
    if (weight_grad) dw = torch::empty({shape.cols}, x.options().dtype(torch::kFloat32));
    kernels::rms_norm_backward(dy.data_ptr(), x.data_ptr(), w.data_ptr(), inv_rms.data_ptr<float>(), dx.data_ptr(),
                               weight_grad ? dw.data_ptr<float>() : nullptr, shape, dtype_of(x), kernel_device(x));
    return {dx, weight_grad ? dw.to(w.scalar_type()) : torch::Tensor(), torch::Tensor()};
  }
};

struct SwigluFunction : public torch::autograd::Function<SwigluFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate_in, const torch::Tensor& up_in) {
    const torch::Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
    torch::Tensor y = torch::empty_like(gate);
    kernels::swiglu_forward(gate.data_ptr(), up.data_ptr(), y.data_ptr(), gate.numel(), dtype_of(gate), kernel_device(gate));
    ctx->save_for_backward({gate, up});
    return y;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &gate = saved[0], &up = saved[1];
    const torch::Tensor dy = grad_outputs[0].contiguous();
    torch::Tensor dgate = torch::empty_like(gate), dup = torch::empty_like(up);
    kernels::swiglu_backward(dy.data_ptr(), gate.data_ptr(), up.data_ptr(), dgate.data_ptr(), dup.data_ptr(), gate.numel(),
                             dtype_of(gate), kernel_device(gate));
    return {dgate, dup};
  }
};

kernels::RopeShape rope_shape(const torch::Tensor& x, int64_t heads) {
  return {x.numel() / x.size(-1), heads, x.size(-1) / heads};
}

struct RopeFunction : public torch::autograd::Function<RopeFunction> {
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, const torch::Tensor& cos_in, const torch::Tensor& sin_in,
                               int64_t heads) {
    const torch::Tensor cos = cos_in.contiguous(), sin = sin_in.contiguous();
    ctx->mark_dirty({x});
    kernels::rope_apply(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), rope_shape(x, heads), kernels::RopeDirection::Forward,
                        dtype_of(x), kernel_device(x));
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["heads"] = heads;
    return x;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    // The engine may hand the same gradient buffer to other consumers: rotate a copy.
    torch::Tensor grad = grad_outputs[0].clone(at::MemoryFormat::Contiguous);
    kernels::rope_apply(grad.data_ptr(), saved[0].data_ptr(), saved[1].data_ptr(), rope_shape(grad, ctx->saved_data["heads"].toInt()),
                        kernels::RopeDirection::Backward, dtype_of(grad), kernel_device(grad));
    return {grad, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

struct LinearCrossEntropyFunction : public torch::autograd::Function<LinearCrossEntropyFunction> {
  // The gradients are taken here, chunk by chunk, and only scaled in backward. token_rows
  // ([0, hidden] without) stand in for the rows token_ids names: their columns of each chunk's
  // logits are their own product, and only they get a gradient for them.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden_in, const torch::Tensor& weight,
                               const torch::Tensor& token_rows, const torch::Tensor& token_ids, const torch::Tensor& targets_in,
                               int64_t chunk_rows) {
    const torch::Tensor hidden = hidden_in.contiguous(), targets = targets_in.contiguous();
    const int64_t rows = hidden.size(0), vocab = weight.size(0);
    const bool hidden_grad = hidden_in.requires_grad(), weight_grad = weight.requires_grad();
    const bool has_rows = token_rows.size(0) > 0, rows_grad = has_rows && token_rows.requires_grad();
    const auto fp32 = hidden.options().dtype(torch::kFloat32);
    const torch::Tensor row_weight = has_rows ? token_rows.to(hidden.scalar_type()) : torch::Tensor();
    torch::Tensor losses = torch::empty({rows}, fp32);
    torch::Tensor dhidden = hidden_grad ? torch::empty_like(hidden) : torch::Tensor();
    torch::Tensor dweight = weight_grad ? torch::zeros(weight.sizes(), fp32) : torch::Tensor();
    torch::Tensor drows = rows_grad ? torch::zeros(token_rows.sizes(), fp32) : torch::Tensor();
    if (chunk_rows <= 0) chunk_rows = loss_chunk_rows(rows, hidden.size(1), vocab);
    // One buffer for every chunk's logits: a fresh one per chunk (hundreds of MiB) would be
    // mapped and faulted in anew each time on the CPU.
    const torch::Tensor logits_buffer = torch::empty({std::min(chunk_rows, rows), vocab}, hidden.options());
    for (int64_t first = 0; first < rows; first += chunk_rows) {
      const int64_t count = std::min(chunk_rows, rows - first);
      const torch::Tensor h = hidden.narrow(0, first, count);
      torch::Tensor logits = logits_buffer.narrow(0, 0, count);
      at::mm_out(logits, h, weight.t());
      if (has_rows) logits.index_copy_(1, token_ids, torch::matmul(h, row_weight.t()));
      kernels::cross_entropy_rows(logits.data_ptr(), targets.data_ptr<int64_t>() + first, losses.data_ptr<float>() + first,
                                  {count, vocab}, kIgnoreIndex, hidden_grad || weight_grad || rows_grad, dtype_of(logits),
                                  kernel_device(logits));
      // The rows' columns of the logits' gradient go to the rows, the others to weight.
      torch::Tensor row_logits;
      if (has_rows && (hidden_grad || rows_grad)) row_logits = logits.index_select(1, token_ids);
      if (has_rows && (hidden_grad || weight_grad)) logits.index_fill_(1, token_ids, 0);
      if (hidden_grad) {
        torch::Tensor out = dhidden.narrow(0, first, count);
        at::mm_out(out, logits, weight);
        if (has_rows) out.addmm_(row_logits, row_weight);
      }
      if (weight_grad) dweight.add_(torch::matmul(logits.t(), h).to(torch::kFloat32));
      if (rows_grad) drows.add_(torch::matmul(row_logits.t(), h).to(torch::kFloat32));
    }
    ctx->saved_data["weight_dtype"] = weight.scalar_type();
    ctx->saved_data["rows_dtype"] = token_rows.scalar_type();
    ctx->saved_data["dhidden"] = dhidden;
    ctx->saved_data["dweight"] = dweight;
    ctx->saved_data["drows"] = drows;
    return losses.sum();
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    const torch::Tensor scale = grad_outputs[0];
    const auto scaled = [&](const char* name, const char* dtype) {
      const torch::Tensor gradient = ctx->saved_data[name].toTensor();
      return gradient.defined() ? (gradient * scale).to(ctx->saved_data[dtype].toScalarType()) : torch::Tensor();
    };
    const torch::Tensor dhidden = ctx->saved_data["dhidden"].toTensor();
    return {dhidden.defined() ? dhidden * scale.to(dhidden.scalar_type()) : torch::Tensor(),
            scaled("dweight", "weight_dtype"),
            scaled("drows", "rows_dtype"),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

int64_t loss_chunk_rows(int64_t rows, int64_t hidden, int64_t vocab) {
  const int64_t ratio = (vocab + hidden - 1) / hidden;
  int64_t chunk = kMinLossChunkRows;
  while (chunk < (rows + ratio - 1) / ratio) chunk *= 2;
  return std::min(chunk, std::max<int64_t>(rows, 1));
}

bool fused_ops_apply(const torch::Tensor& x) {
  return (x.is_cpu() || x.is_cuda()) && is_float_type(x.scalar_type());
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  if (!fused_ops_apply(x) || weight.scalar_type() != x.scalar_type()) return reference::rms_norm(x, weight, eps);
  return RmsNormFunction::apply(x, weight, eps);
}

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up) {
  if (!fused_ops_apply(gate) || up.scalar_type() != gate.scalar_type()) return reference::swiglu(gate, up);
  return SwigluFunction::apply(gate, up);
}

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads) {
  if (!fused_ops_apply(x) || cos.scalar_type() != x.scalar_type()) return reference::apply_rope(x, cos, sin, heads);
  return RopeFunction::apply(x.is_contiguous() ? x : x.contiguous(), cos, sin, heads);
}

SummedLoss linear_cross_entropy(const torch::Tensor& hidden, const VocabMatrix& matrix, const torch::Tensor& targets,
                                int64_t chunk_rows) {
  const torch::Tensor& weight = matrix.weight;
  SHARDLORA_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1) && targets.dim() == 1 &&
                      targets.size(0) == hidden.size(0),
                  "linear_cross_entropy: hidden ", hidden.sizes(), ", weight ", weight.sizes(), " and targets ",
                  targets.sizes(), " do not fit together");
  if (!fused_ops_apply(hidden)) return reference::linear_cross_entropy(hidden, matrix.dense(hidden.scalar_type()), targets);
  const torch::Tensor ids = targets.to(hidden.device(), torch::kInt64);
  // libtorch's autograd functions take defined tensors only: no rows is none of them.
  const torch::Tensor rows = matrix.has_rows() ? matrix.rows : torch::empty({0, weight.size(1)}, hidden.options());
  const torch::Tensor token_ids = matrix.has_rows() ? matrix.token_ids : torch::empty({0}, ids.options());
  const torch::Tensor summed =
      LinearCrossEntropyFunction::apply(hidden, weight.to(hidden.scalar_type()), rows, token_ids, ids, chunk_rows);
  return {summed, ids.ne(kIgnoreIndex).sum()};
}

namespace reference {

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  const torch::Tensor x32 = x.to(torch::kFloat32);
  const torch::Tensor normed = x32 * torch::rsqrt(x32.pow(2).mean(-1, true) + eps);
  return weight * normed.to(x.scalar_type());
}

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up) { return torch::silu(gate) * up; }

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads) {
  const auto shape = x.sizes().vec();
  const torch::Tensor per_head = x.view({shape[0], shape[1], heads, -1});
  const torch::Tensor c = torch::cat({cos, cos}, -1).unsqueeze(2), s = torch::cat({sin, sin}, -1).unsqueeze(2);
  const auto halves = per_head.chunk(2, -1);
  const torch::Tensor rotated = torch::cat({-halves[1], halves[0]}, -1);
  return (per_head * c + rotated * s).view(shape);
}

SummedLoss linear_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight, const torch::Tensor& targets) {
  const torch::Tensor product = torch::matmul(hidden, weight.t());
  const torch::Tensor logits = product.to(c10::promoteTypes(product.scalar_type(), torch::kFloat32));  // float32 at least
  const torch::Tensor ids = targets.to(hidden.device(), torch::kInt64), mask = ids.ne(kIgnoreIndex);
  const torch::Tensor losses = torch::nn::functional::cross_entropy(
      logits, ids.masked_fill(mask.logical_not(), 0), torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  return {(losses * mask.to(losses.scalar_type())).sum(), mask.sum()};
}

}  // namespace reference
}  // namespace shardlora::nn
