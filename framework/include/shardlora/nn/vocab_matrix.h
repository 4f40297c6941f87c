// A vocabulary matrix (embed_tokens, lm_head) with some of its rows trained apart from it, as
// PEFT's TrainableTokensLayer trains new tokens: `weight` [vocab, hidden] as loaded (frozen,
// or trained whole), and `rows` [n, hidden] standing in for the rows `token_ids` names. The
// ops here use the rows where they stand instead of building the matrix with them in place
// (PEFT builds it with index_copy every forward), so nothing of [vocab, hidden] is copied or
// gets a gradient for them: the gradient of the rows is [n, hidden].
#pragma once

#include <torch/torch.h>

#include <utility>

namespace shardlora::nn {

struct VocabMatrix {
  // A matrix without trained rows (implicit: any [vocab, hidden] tensor is one).
  VocabMatrix(torch::Tensor weight) : weight(std::move(weight)) {}  // NOLINT(google-explicit-constructor)
  VocabMatrix(torch::Tensor weight, torch::Tensor token_ids, torch::Tensor rows, torch::Tensor slots)
      : weight(std::move(weight)), token_ids(std::move(token_ids)), rows(std::move(rows)), slots(std::move(slots)) {}

  torch::Tensor weight;     // [vocab, hidden]
  torch::Tensor token_ids;  // [n] int64, distinct; undefined without trained rows
  torch::Tensor rows;       // [n, hidden], any float dtype (the model's are fp32)
  torch::Tensor slots;      // [vocab] int64: each token's row in `rows`, -1 for the others

  bool has_rows() const { return rows.defined(); }
  // `weight` in `dtype` with the rows in place: what the ops below compute with, as the op
  // chain they replace (and the parity tests' reference).
  torch::Tensor dense(torch::ScalarType dtype) const;
};

// `weight` [rows, hidden] grown to `vocab_size` rows, the new ones the mean row (taken in
// float32, in weight's dtype): the centre transformers' resize_token_embeddings(mean_resizing)
// draws them around. Unchanged when it has as many rows already.
torch::Tensor grow_vocabulary(const torch::Tensor& weight, int64_t vocab_size);

// VocabMatrix::slots for `token_ids` (distinct, else an error) in a vocabulary of `vocab`.
torch::Tensor token_slots(const torch::Tensor& token_ids, int64_t vocab);

// The embeddings of ids [...] in `dtype`: torch::embedding(matrix.dense(dtype), ids), with the
// trained rows gathered in float32 (their gradient sums in float32) and cast.
torch::Tensor embed(const VocabMatrix& matrix, const torch::Tensor& ids, torch::ScalarType dtype);

// hidden [..., hidden] @ matrix.dense(hidden's dtype)^T: the trained rows' columns are their
// own product, written over the frozen rows'.
torch::Tensor project(const torch::Tensor& hidden, const VocabMatrix& matrix);

}  // namespace shardlora::nn
