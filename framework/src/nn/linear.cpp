#include "shardlora/nn/linear.h"

#include <algorithm>
#include <cmath>
#include <vector>

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

torch::Tensor FrozenLinear::forward(const torch::Tensor& x) {
  const torch::Tensor y = product(x);
  return bias_ ? y + bias_->to(y.scalar_type()) : y;
}

torch::Tensor QuantizedLinear::product(const torch::Tensor& x) {
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
  return y;
}

torch::Tensor QuantizedLinear::dense_weight(c10::ScalarType dtype) const { return dequantized_as(state(), dtype); }

DenseLinear::DenseLinear(torch::Tensor weight, std::optional<torch::Tensor> bias) : weight_(weight.detach()) {
  SHARDLORA_CHECK(weight_.dim() == 2, "DenseLinear needs a 2-D weight");
  bias_ = std::move(bias);
}

torch::Tensor DenseLinear::product(const torch::Tensor& x) { return torch::matmul(x, weight_.to(x.scalar_type()).t()); }

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
  if (!lora.use_dora) return;
  // W is frozen: ||W||^2 per row once, in fp64 (by blocks of rows: no fp64 copy of W), where
  // the base lives. With B = 0 the forward's norm is the fp32 root of it, the magnitudes' start.
  const torch::Tensor weight = base_->dense_weight(torch::kFloat32);
  const int64_t rows = std::max<int64_t>(1, (int64_t{1} << 18) / weight.size(1));
  std::vector<torch::Tensor> blocks;
  for (int64_t row = 0; row < weight.size(0); row += rows) {
    blocks.push_back(weight.narrow(0, row, std::min(rows, weight.size(0) - row)).to(torch::kFloat64).pow(2).sum(1));
  }
  weight_squared_norms_ = torch::cat(blocks);
  lora_magnitude_vector = register_parameter("lora_magnitude_vector", weight_squared_norms_.to(torch::kFloat32).sqrt().cpu());
}

// ||W + s B A||^2 = ||W||^2 + 2 s rowsum(B * (W A^T)) + s^2 rowsum(B * (B A A^T)), W A^T from
// the base's own product with A's rows: no [out, in] sum is formed, and a 4-bit W is
// dequantized once, as a forward does.
torch::Tensor AdaptedLinearImpl::weight_norm(c10::ScalarType dtype) const {
  torch::NoGradGuard no_grad;
  const auto precision = dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  // In-place updates (the optimizer's, an adapter's load) move the versions; W is frozen.
  const NormKey key{lora_A.data_ptr(), lora_B.data_ptr(), lora_A._version(), lora_B._version(), precision};
  if (norm_.defined() && key == norm_key_) return norm_;
  const torch::Tensor A = lora_A.to(weight_squared_norms_.device(), precision), B = lora_B.to(A.device(), precision);
  const torch::Tensor weight_a = base_->product(A).t();  // [out, r]
  const double s = lora_.scaling();
  const torch::Tensor squared = weight_squared_norms_.to(precision) + 2 * s * (B * weight_a).sum(1) +
                                s * s * (B * torch::matmul(B, torch::matmul(A, A.t()))).sum(1);
  norm_ = squared.clamp_min(0).sqrt();
  norm_key_ = key;
  return norm_;
}

torch::Tensor AdaptedLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = base_->forward(x);
  if (!has_adapter()) return y;
  const auto dtype = x.scalar_type();
  const auto adapter_output = [&](const torch::Tensor& h) {
    return torch::matmul(torch::matmul(h, lora_A.to(dtype).t()), lora_B.to(dtype).t());
  };
  const bool dropping = lora_.dropout > 0 && is_training();
  const torch::Tensor h = dropping ? torch::dropout(x, lora_.dropout, true) : x;
  if (!lora_.use_dora) return y + adapter_output(h) * lora_.scaling();
  // PEFT's order of operations, so fp64 agrees to rounding.
  const torch::Tensor scale = (lora_magnitude_vector.to(dtype) / weight_norm(dtype).to(dtype)).view({1, -1});
  torch::Tensor base_result;
  if (dropping) {
    base_result = base_->product(h);
  } else {
    base_result = base_->bias() ? y - base_->bias()->to(y.scalar_type()) : y;
  }
  return y + ((scale - 1) * base_result + scale * adapter_output(h) * lora_.scaling());
}

std::vector<std::pair<std::string, torch::Tensor>> AdaptedLinearImpl::adapter_tensors() const {
  if (!has_adapter()) return {};
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {{"lora_A.weight", lora_A}, {"lora_B.weight", lora_B}};
  if (lora_.use_dora) tensors.emplace_back("lora_magnitude_vector", lora_magnitude_vector);  // PEFT drops its ".weight"
  return tensors;
}

torch::Tensor AdaptedLinearImpl::merged_weight(c10::ScalarType dtype) const {
  torch::Tensor weight = base_->dense_weight(torch::kFloat32);
  if (!has_adapter()) return weight.to(dtype);
  torch::NoGradGuard no_grad;
  weight = weight + torch::matmul(lora_B, lora_A) * lora_.scaling();
  if (lora_.use_dora) {
    const torch::Tensor norm = weight.norm(2, {1});
    weight = (lora_magnitude_vector / norm).view({-1, 1}) * weight;
  }
  return weight.to(dtype);
}

}  // namespace shardlora::nn
