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

// autograd saves the layer, not its state: a sharded layer's gathered state lives in a
// reused buffer, so backward asks for it again.
struct Linear4bitFunction : public torch::autograd::Function<Linear4bitFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const QuantizedLinear* linear) {
    ctx->saved_data["linear"] = reinterpret_cast<int64_t>(linear);
    return torch::matmul(x, dequantized_as(linear->state(), x.scalar_type()).t());
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    const auto* linear = reinterpret_cast<const QuantizedLinear*>(ctx->saved_data["linear"].toInt());
    const torch::Tensor& grad = grad_outputs[0];
    return {torch::matmul(grad, dequantized_as(linear->state(), grad.scalar_type())), torch::Tensor()};
  }
};

// One token, no autograd, a supported layout: the fused kernel reads the 4-bit weight once.
bool use_gemv(const quant::QuantState& state, const torch::Tensor& x) {
  return !torch::GradMode::is_enabled() && x.numel() == state.shape[1] && is_float_type(x.scalar_type()) &&
         state.shape[1] % state.blocksize == 0 && x.device() == state.codes.device();
}

}  // namespace

QuantizedLinear::QuantizedLinear(std::vector<int64_t> shape, std::optional<torch::Tensor> bias) : shape_(std::move(shape)) {
  SHARDLORA_CHECK(shape_.size() == 2, "a 4-bit Linear needs a 2-D weight");
  bias_ = std::move(bias);
}

Linear4bit::Linear4bit(quant::QuantState state, std::optional<torch::Tensor> bias)
    : QuantizedLinear(state.shape, std::move(bias)), state_(std::move(state)) {}

torch::Tensor QuantizedLinear::forward(const torch::Tensor& x) {
  const quant::QuantState& weight = state();
  torch::Tensor y;
  if (use_gemv(weight, x)) {
    const torch::Tensor absmax = quant::absmax_fp32(weight);
    const torch::Tensor input = x.contiguous();
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = weight.shape[0];
    y = torch::empty(shape, x.options());
    kernels::gemv_4bit({weight.type, weight.codes.data_ptr<uint8_t>(), absmax.data_ptr<float>(), weight.numel(), weight.blocksize},
                       {weight.shape[0], weight.shape[1]}, input.data_ptr(), to_kernels_dtype(x.scalar_type()), y.data_ptr(),
                       to_kernels_dtype(x.scalar_type()),
                       kernel_device(x));
  } else {
    y = Linear4bitFunction::apply(x, static_cast<const QuantizedLinear*>(this));
  }
  return bias_ ? y + bias_->to(y.scalar_type()) : y;
}

torch::Tensor QuantizedLinear::dense_weight(c10::ScalarType dtype) const { return dequantized_as(state(), dtype); }

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
