#include "shardlora/nn/flash_attention.h"

#include "shardlora/kernels/check.h"
#include "shardlora/kernels/device.h"
#include "shardlora/tensor/named_op_call.h"

namespace shardlora::nn {
namespace {

constexpr const char* kFlashForward = "aten::_flash_attention_forward";
constexpr const char* kFlashBackward = "aten::_flash_attention_backward";
constexpr int kFlashMinComputeCapability = 80;
constexpr int64_t kFlashMaxHeadDim = 256;

bool flash_has_window_arguments() {
  static const bool has = op_has_arguments(kFlashForward, "", {"window_size_left", "window_size_right"}) &&
                          op_has_arguments(kFlashBackward, "", {"window_size_left", "window_size_right"});
  return has;
}

// FlashAttention's layout, [B, T, H, D] with D of unit stride: the projections' own layout,
// of which q, k and v [B, H, T, D] are transposed views.
at::Tensor heads_inner(const at::Tensor& t) {
  const at::Tensor view = t.transpose(1, 2);
  return view.stride(-1) == 1 ? view : view.contiguous();
}

}  // namespace

bool flash_window_attention_applies(const at::Tensor& q) {
  if (!q.is_cuda() || (q.scalar_type() != at::kHalf && q.scalar_type() != at::kBFloat16)) return false;
  const int64_t dim = q.size(-1);
  return dim % 8 == 0 && dim <= kFlashMaxHeadDim && flash_has_window_arguments() &&
         kernels::cuda_compute_capability(q.get_device()) >= kFlashMinComputeCapability;
}

at::Tensor flash_window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t window) {
  SHARDLORA_CHECK(window > 0 && q.dim() == 4 && k.dim() == 4 && k.sizes() == v.sizes() && q.size(2) == k.size(2) &&
                      q.size(1) % k.size(1) == 0,
                  "flash_window_attention: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes(), ", window ", window);
  const int64_t length = q.size(2);
  // Causal: FlashAttention then counts window_size_right as 0; the left edge keeps the
  // window - 1 keys before the query's own.
  const std::vector<c10::IValue> returns = call_op_by_argument_names(
      kFlashForward, "",
      {{"query", heads_inner(q)}, {"key", heads_inner(k)}, {"value", heads_inner(v)}, {"cum_seq_q", c10::IValue()},
       {"cum_seq_k", c10::IValue()}, {"max_q", length}, {"max_k", length}, {"dropout_p", 0.0}, {"is_causal", true},
       {"return_debug_mask", false}, {"window_size_left", window - 1}, {"window_size_right", int64_t{0}}});
  return returns.at(0).toTensor().transpose(1, 2);
}

}  // namespace shardlora::nn
