// The Linear layers of the model: a frozen base (4-bit for QLoRA, float for plain LoRA and
// merging) with an optional LoRA adapter on top, as PEFT defines it (FORMATS.md §4.4):
//   y = base(x) + scaling * B(A(dropout(x))),  A [r, in] kaiming-uniform(a=sqrt 5), B [out, r] zeros,
//   scaling = alpha / r, or alpha / sqrt(r) with use_rslora.
// With use_dora, DoRA as PEFT's DoraLinearLayer computes it (tuners/lora/dora.py): a
// magnitude m [out] starts as the row norms of W, and
//   y = base(x) + (m / n - 1) * W x_d + (m / n) * scaling * B(A(x_d)),  n = ||W + scaling * B A||_row
// with n a constant for autograd (detached) and x_d = dropout(x); without dropout or in eval
// W x_d is base(x) less the bias, as PEFT reuses it. The 4-bit base is dequantized for n.
// Adapter weights are fp32 parameters, used in the compute dtype of x.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>

#include "shardlora/quant/quant_state.h"

namespace shardlora::nn {

class FrozenLinear {
 public:
  virtual ~FrozenLinear() = default;
  torch::Tensor forward(const torch::Tensor& x);  // [..., in] -> [..., out]: product + bias
  virtual torch::Tensor product(const torch::Tensor& x) = 0;  // x W^T, without the bias
  virtual torch::Tensor dense_weight(c10::ScalarType dtype) const = 0;  // [out, in]
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  const std::optional<torch::Tensor>& bias() const { return bias_; }

 protected:
  std::optional<torch::Tensor> bias_;
};

// A 4-bit base: never a float copy of the weight. Forward dequantizes per call (or runs
// the fused gemv for one token without autograd), and backward produces only the input
// gradient, dequantizing again instead of saving W.
class QuantizedLinear : public FrozenLinear {
 public:
  torch::Tensor product(const torch::Tensor& x) override;
  torch::Tensor dense_weight(c10::ScalarType dtype) const override;
  int64_t in_features() const override { return shape_[1]; }
  int64_t out_features() const override { return shape_[0]; }
  // Packed codes and quantization state to compute with: held here (Linear4bit) or, for a
  // base sharded over ranks, gathered on demand (ShardedLinear4bit: a collective call).
  virtual const quant::QuantState& state() const = 0;

 protected:
  QuantizedLinear(std::vector<int64_t> shape, std::optional<torch::Tensor> bias);

 private:
  std::vector<int64_t> shape_;
};

class Linear4bit : public QuantizedLinear {
 public:
  explicit Linear4bit(quant::QuantState state, std::optional<torch::Tensor> bias = std::nullopt);
  const quant::QuantState& state() const override { return state_; }

 private:
  quant::QuantState state_;
};

// A frozen float weight (no gradient).
class DenseLinear : public FrozenLinear {
 public:
  explicit DenseLinear(torch::Tensor weight, std::optional<torch::Tensor> bias = std::nullopt);
  torch::Tensor product(const torch::Tensor& x) override;
  torch::Tensor dense_weight(c10::ScalarType dtype) const override { return weight_.to(dtype); }
  int64_t in_features() const override { return weight_.size(1); }
  int64_t out_features() const override { return weight_.size(0); }
  const torch::Tensor& weight() const { return weight_; }

 private:
  torch::Tensor weight_;
};

struct LoraOptions {
  int64_t r = 0;  // 0: no adapter
  double alpha = 16.0;
  double dropout = 0.0;
  bool use_rslora = false;
  bool use_dora = false;
  double scaling() const;
};

class AdaptedLinearImpl : public torch::nn::Module {
 public:
  AdaptedLinearImpl(std::shared_ptr<FrozenLinear> base, const LoraOptions& lora);
  torch::Tensor forward(const torch::Tensor& x);

  bool has_adapter() const { return lora_.r > 0; }
  const LoraOptions& lora() const { return lora_; }
  FrozenLinear& base() { return *base_; }
  const FrozenLinear& base() const { return *base_; }
  torch::Tensor lora_A, lora_B;  // [r, in], [out, r] fp32 parameters (undefined without an adapter)
  torch::Tensor lora_magnitude_vector;  // [out] fp32 parameter with use_dora (else undefined)

  // The adapter's tensors by the suffix PEFT saves them under (after "<module path>."):
  // lora_A.weight, lora_B.weight and, with DoRA, lora_magnitude_vector.
  std::vector<std::pair<std::string, torch::Tensor>> adapter_tensors() const;

  // W + scaling * B A in `dtype` (for shardlora merge; DoRA: scaled by row to the
  // magnitudes, as PEFT merges).
  torch::Tensor merged_weight(c10::ScalarType dtype) const;

 private:
  // ||W + scaling * B A|| per row, without gradient, in fp64 for fp64 and else in fp32;
  // computed again only when A or B has changed (decoding, recomputation under activation
  // checkpointing and further micro-batches of a step reuse it).
  torch::Tensor weight_norm(c10::ScalarType dtype) const;
  torch::Tensor weight_squared_norms_;  // ||W||^2 per row, fp64, with DoRA
  struct NormKey {
    const void* a = nullptr;
    const void* b = nullptr;
    int64_t a_version = -1, b_version = -1;
    c10::ScalarType precision = c10::ScalarType::Undefined;
    bool operator==(const NormKey& o) const {
      return a == o.a && b == o.b && a_version == o.a_version && b_version == o.b_version && precision == o.precision;
    }
  };
  mutable NormKey norm_key_;
  mutable torch::Tensor norm_;

  std::shared_ptr<FrozenLinear> base_;
  LoraOptions lora_;
};
TORCH_MODULE(AdaptedLinear);

}  // namespace shardlora::nn
