#include "shardlora/nn/vocab_matrix.h"

#include "shardlora/kernels/check.h"

namespace shardlora::nn {

torch::Tensor VocabMatrix::dense(torch::ScalarType dtype) const {
  const torch::Tensor matrix = weight.to(dtype);
  return has_rows() ? matrix.index_copy(0, token_ids, rows.to(dtype)) : matrix;
}

torch::Tensor grow_vocabulary(const torch::Tensor& weight, int64_t vocab_size) {
  if (vocab_size <= weight.size(0)) return weight;
  const torch::Tensor mean = weight.to(torch::kFloat32).mean(0, true).to(weight.scalar_type());
  return torch::cat({weight, mean.expand({vocab_size - weight.size(0), weight.size(1)})});
}

torch::Tensor token_slots(const torch::Tensor& token_ids, int64_t vocab) {
  const int64_t count = token_ids.numel();
  torch::Tensor slots = torch::full({vocab}, -1, token_ids.options().dtype(torch::kInt64));
  slots.index_copy_(0, token_ids.to(torch::kInt64), torch::arange(count, slots.options()));
  SHARDLORA_CHECK(slots.ge(0).sum().item<int64_t>() == count, "trained token rows: the ", count, " token ids are not distinct");
  return slots;
}

torch::Tensor embed(const VocabMatrix& matrix, const torch::Tensor& ids, torch::ScalarType dtype) {
  // Rows first, then the cast: a matrix trained whole (fp32) is never copied whole.
  const torch::Tensor embedded = torch::embedding(matrix.weight, ids).to(dtype);
  if (!matrix.has_rows()) return embedded;
  const torch::Tensor slot = matrix.slots.index_select(0, ids.reshape(-1)).view(ids.sizes());
  // Positions of other tokens gather row 0 and take no part: their gradient there is zero.
  const torch::Tensor trained = torch::embedding(matrix.rows, slot.clamp_min(0)).to(dtype);
  return torch::where(slot.ge(0).unsqueeze(-1), trained, embedded);
}

torch::Tensor project(const torch::Tensor& hidden, const VocabMatrix& matrix) {
  torch::Tensor logits = torch::matmul(hidden, matrix.weight.to(hidden.scalar_type()).t());
  if (!matrix.has_rows()) return logits;
  // In place: matmul's backward does not read its output.
  return logits.index_copy_(-1, matrix.token_ids, torch::matmul(hidden, matrix.rows.to(hidden.scalar_type()).t()));
}

}  // namespace shardlora::nn
