#include "shardlora/nn/linear.h"

#include <cmath>

#include "shardlora/kernels/check.h"
#include "shardlora/kernels/gemv_4bit.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::nn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// The weight in the dtype of the activations (fp64 goes through fp32: the kernels write
// fp32 / fp16 / bf16, and fp32 holds every dequantized value exactly).
torch::Tensor dequantized_as(const quant::QuantState& state, c10::ScalarType dtype) {
  return is_float_type(dtype) ? quant::dequantize(state, dtype) : quant::dequantize(state, torch::kFloat32).to(dtype);
}

// autograd saves only what the state already holds (packed codes and scales), by reference.
void save_state(AutogradContext* ctx, const quant::QuantState& state) {
  ctx->saved_data["codes"] = state.codes;
  ctx->saved_data["absmax"] = state.absmax;
  ctx->saved_data["code"] = state.code;
  ctx->saved_data["type"] = static_cast<int64_t>(state.type);
  ctx->saved_data["blocksize"] = state.blocksize;
  ctx->saved_data["shape"] = state.shape;
  ctx->saved_data["dtype"] = static_cast<int64_t>(state.dtype);
  ctx->saved_data["nested"] = state.nested;
  if (state.nested) {
    ctx->saved_data["nested_absmax"] = state.nested_absmax;
    ctx->saved_data["nested_code"] = state.nested_code;
    ctx->saved_data["nested_blocksize"] = state.nested_blocksize;
    ctx->saved_data["nested_offset"] = static_cast<double>(state.nested_offset);
  }
}

quant::QuantState load_state(AutogradContext* ctx) {
  quant::QuantState state;
  state.codes = ctx->saved_data["codes"].toTensor();
  state.absmax = ctx->saved_data["absmax"].toTensor();
  state.code = ctx->saved_data["code"].toTensor();
  state.type = static_cast<kernels::QuantType>(ctx->saved_data["type"].toInt());
  state.blocksize = ctx->saved_data["blocksize"].toInt();
  state.shape = ctx->saved_data["shape"].toIntVector();
  state.dtype = static_cast<c10::ScalarType>(ctx->saved_data["dtype"].toInt());
  state.nested = ctx->saved_data["nested"].toBool();
  if (state.nested) {
    state.nested_absmax = ctx->saved_data["nested_absmax"].toTensor();
    state.nested_code = ctx->saved_data["nested_code"].toTensor();
    state.nested_blocksize = ctx->saved_data["nested_blocksize"].toInt();
    state.nested_offset = static_cast<float>(ctx->saved_data["nested_offset"].toDouble());
  }
  return state;
}

struct Linear4bitFunction : public torch::autograd::Function<Linear4bitFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const quant::QuantState& state) {
    save_state(ctx, state);
    return torch::matmul(x, dequantized_as(state, x.scalar_type()).t());
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    const torch::Tensor& grad = grad_outputs[0];
    return {torch::matmul(grad, dequantized_as(load_state(ctx), grad.scalar_type())), torch::Tensor()};
  }
};

// One token, no autograd, a supported layout: the fused kernel reads the 4-bit weight once.
bool use_gemv(const quant::QuantState& state, const torch::Tensor& x) {
  return !torch::GradMode::is_enabled() && x.numel() == state.shape[1] && is_float_type(x.scalar_type()) &&
         state.shape[1] % state.blocksize == 0 && x.device() == state.codes.device();
}

}  // namespace

Linear4bit::Linear4bit(quant::QuantState state, std::optional<torch::Tensor> bias) : state_(std::move(state)) {
  SHARDLORA_CHECK(state_.shape.size() == 2, "Linear4bit needs a 2-D weight");
  bias_ = std::move(bias);
}

torch::Tensor Linear4bit::forward(const torch::Tensor& x) {
  torch::Tensor y;
  if (use_gemv(state_, x)) {
    const torch::Tensor absmax = quant::absmax_fp32(state_);
    const torch::Tensor input = x.contiguous();
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = state_.shape[0];
    y = torch::empty(shape, x.options());
    kernels::gemv_4bit({state_.type, state_.codes.data_ptr<uint8_t>(), absmax.data_ptr<float>(), state_.numel(), state_.blocksize},
                       {state_.shape[0], state_.shape[1]}, input.data_ptr(), to_kernels_dtype(x.scalar_type()), y.data_ptr(),
                       to_kernels_dtype(x.scalar_type()),
                       x.is_cuda() ? kernels::Device::cuda(x.get_device()) : kernels::Device::cpu());
  } else {
    y = Linear4bitFunction::apply(x, state_);
  }
  return bias_ ? y + bias_->to(y.scalar_type()) : y;
}

torch::Tensor Linear4bit::dense_weight(c10::ScalarType dtype) const { return dequantized_as(state_, dtype); }

DenseLinear::DenseLinear(torch::Tensor weight, std::optional<torch::Tensor> bias) : weight_(weight.detach()) {
  SHARDLORA_CHECK(weight_.dim() == 2, "DenseLinear needs a 2-D weight");
  bias_ = std::move(bias);
}

torch::Tensor DenseLinear::forward(const torch::Tensor& x) {
  const torch::Tensor y = torch::matmul(x, weight_.to(x.scalar_type()).t());
  return bias_ ? y + bias_->to(y.scalar_type()) : y;
}

double LoraOptions::scaling() const {
  if (r == 0) return 0.0;
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

AdaptedLinearImpl::AdaptedLinearImpl(std::shared_ptr<FrozenLinear> base, const LoraOptions& lora)
    : base_(std::move(base)), lora_(lora) {
  SHARDLORA_CHECK(lora.r >= 0 && lora.dropout >= 0 && lora.dropout < 1, "bad LoRA options: r ", lora.r, ", dropout ", lora.dropout);
  if (!has_adapter()) return;
  lora_A = register_parameter("lora_A", torch::empty({lora.r, base_->in_features()}));
  lora_B = register_parameter("lora_B", torch::zeros({base_->out_features(), lora.r}));
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(lora_A, std::sqrt(5.0));
}

torch::Tensor AdaptedLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = base_->forward(x);
  if (!has_adapter()) return y;
  const torch::Tensor h = lora_.dropout > 0 ? torch::dropout(x, lora_.dropout, is_training()) : x;
  const auto dtype = x.scalar_type();
  return y + torch::matmul(torch::matmul(h, lora_A.to(dtype).t()), lora_B.to(dtype).t()) * lora_.scaling();
}

torch::Tensor AdaptedLinearImpl::merged_weight(c10::ScalarType dtype) const {
  torch::Tensor weight = base_->dense_weight(torch::kFloat32);
  if (has_adapter()) weight = weight + torch::matmul(lora_B, lora_A).detach() * lora_.scaling();
  return weight.to(dtype);
}

torch::Tensor AdaptedLinearImpl::unmerge(const torch::Tensor& merged) const {
  if (!has_adapter()) return merged;
  return (merged.to(torch::kFloat32) - torch::matmul(lora_B, lora_A).detach() * lora_.scaling()).to(merged.scalar_type());
}

}  // namespace shardlora::nn
