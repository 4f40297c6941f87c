// The fused ops bound as autograd functions (nn/fused_ops.h) against the op chains they
// replace (nn::reference, run in float64 as the higher-precision reference): forward values
// and every input's gradient within fp32 rounding, bf16 within bf16 rounding; the chunked
// linear cross-entropy at every chunk size, with ignored targets, equal to the unchunked loss.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "shardlora/kernels/check.h"
#include "shardlora/nn/fused_ops.h"
#include "shardlora/nn/llama.h"
#include "shardlora/tensor/named_op_call.h"
#include "fused_op_checks.h"

using namespace shardlora;
using namespace shardlora::testing;

namespace {

TEST(FusedOps, RmsNormMatchesTheOpChainForwardAndBackward) {
  torch::manual_seed(1);
  const std::vector<torch::Tensor> inputs = {torch::randn({3, 5, 100}, torch::kFloat64) * 3, torch::randn({100}, torch::kFloat64)};
  const Op fused = [](const auto& t) { return nn::rms_norm(t[0], t[1], 1e-5); };
  const Op reference = [](const auto& t) { return nn::reference::rms_norm(t[0], t[1], 1e-5); };
  check_against_reference(fused, reference, inputs, torch::kFloat32, kFp32, "fp32");
  check_against_reference(fused, reference, inputs, torch::kBFloat16, kBf16, "bf16");
}

TEST(FusedOps, SwigluMatchesTheOpChainForwardAndBackward) {
  torch::manual_seed(2);
  const std::vector<torch::Tensor> inputs = {torch::randn({4, 7, 99}, torch::kFloat64) * 4, torch::randn({4, 7, 99}, torch::kFloat64)};
  const Op fused = [](const auto& t) { return nn::swiglu(t[0], t[1]); };
  const Op reference = [](const auto& t) { return nn::reference::swiglu(t[0], t[1]); };
  check_against_reference(fused, reference, inputs, torch::kFloat32, kFp32, "fp32");
  check_against_reference(fused, reference, inputs, torch::kBFloat16, kBf16, "bf16");
}

TEST(FusedOps, RopeMatchesTheOpChainForwardAndBackward) {
  torch::manual_seed(3);
  const int64_t heads = 3, head_dim = 14;
  const torch::Tensor angles = torch::randn({2, 6, head_dim / 2}, torch::kFloat64) * 3;
  const torch::Tensor x = torch::randn({2, 6, heads * head_dim}, torch::kFloat64);
  // The tables are inputs without gradient: close over them.
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    const torch::Tensor cos = angles.cos().to(dtype), sin = angles.sin().to(dtype);
    const Op fused = [&](const auto& t) { return nn::apply_rope(t[0], cos, sin, heads); };
    const Op reference = [&](const auto& t) {
      return nn::reference::apply_rope(t[0], cos.to(torch::kFloat64), sin.to(torch::kFloat64), heads);
    };
    check_against_reference(fused, reference, {x}, dtype, dtype == torch::kFloat32 ? kFp32 : kBf16, torch::toString(dtype));
  }
}

TEST(FusedOps, RopeRotatesInPlaceAndKeepsAutogradConsistent) {
  const torch::Tensor x = torch::randn({1, 3, 8}).requires_grad_(true);
  torch::Tensor y = x * 2;
  const torch::Tensor cos = torch::randn({1, 3, 4}), sin = torch::randn({1, 3, 4});
  const void* storage = y.data_ptr();
  const torch::Tensor rotated = nn::apply_rope(y, cos, sin, 1);
  EXPECT_EQ(rotated.data_ptr(), storage) << "the fused RoPE rotates its input in place";
  rotated.sum().backward();
  const torch::Tensor leaf = x.detach().clone().requires_grad_(true);
  nn::reference::apply_rope(leaf * 2, cos, sin, 1).sum().backward();
  expect_close(x.grad(), leaf.grad(), kFp32, "gradient through the in-place rotation");
}

TEST(FusedOps, ChunkedLinearCrossEntropyEqualsTheUnchunkedLossAtEveryChunkSize) {
  torch::manual_seed(4);
  const int64_t rows = 37, hidden = 24, vocab = 301;
  const torch::Tensor h = torch::randn({rows, hidden}, torch::kFloat64), w = torch::randn({vocab, hidden}, torch::kFloat64) * 0.5;
  torch::Tensor targets = torch::randint(vocab, {rows}, torch::kInt64);
  targets.index_put_({torch::arange(0, rows, 4)}, -100);  // every fourth row ignored
  const auto loss_and_grads = [&](auto&& loss_fn, torch::ScalarType dtype) {
    const torch::Tensor hl = h.to(dtype).detach().requires_grad_(true), wl = w.to(dtype).detach().requires_grad_(true);
    const nn::SummedLoss loss = loss_fn(hl, wl);
    (loss.sum * 0.75).backward();  // a non-unit upstream gradient
    return std::make_tuple(loss.sum.detach(), loss.count, hl.grad(), wl.grad());
  };
  const auto [ref_sum, ref_count, ref_dh, ref_dw] =
      loss_and_grads([&](const auto& a, const auto& b) { return nn::reference::linear_cross_entropy(a, b, targets); }, torch::kFloat64);
  EXPECT_EQ(ref_count.item<int64_t>(), rows - 10);
  for (const int64_t chunk : {int64_t{0}, int64_t{1}, int64_t{5}, int64_t{36}, rows, int64_t{100}}) {
    const std::string what = "chunk " + std::to_string(chunk);
    const auto [sum, count, dh, dw] =
        loss_and_grads([&](const auto& a, const auto& b) { return nn::linear_cross_entropy(a, b, targets, chunk); }, torch::kFloat32);
    EXPECT_EQ(count.item<int64_t>(), ref_count.item<int64_t>()) << what;
    EXPECT_EQ(count.scalar_type(), torch::kInt64);
    expect_close(sum, ref_sum, kFp32 * 4, what + " loss");
    expect_close(dh, ref_dh, kFp32 * 4, what + " d hidden");
    expect_close(dw, ref_dw, kFp32 * 4, what + " d weight");
  }
  const auto [sum16, count16, dh16, dw16] =
      loss_and_grads([&](const auto& a, const auto& b) { return nn::linear_cross_entropy(a, b, targets); }, torch::kBFloat16);
  expect_close(sum16, ref_sum, kBf16, "bf16 loss");
  expect_close(dh16, ref_dh, kBf16 * 2, "bf16 d hidden");
}

TEST(FusedOps, LinearCrossEntropyWithoutGradientLeavesNoneAndRejectsMismatchedShapes) {
  const torch::Tensor h = torch::randn({4, 8}), w = torch::randn({16, 8});
  const torch::Tensor targets = torch::tensor({1, -100, 3, 15}, torch::kInt64);
  torch::NoGradGuard no_grad;
  const nn::SummedLoss loss = nn::linear_cross_entropy(h, w, targets);
  expect_close(loss.sum, nn::reference::linear_cross_entropy(h, w, targets).sum, kFp32, "loss");
  EXPECT_EQ(loss.count.item<int64_t>(), 3);
  EXPECT_THROW(nn::linear_cross_entropy(h, torch::randn({16, 9}), targets), Error);
  EXPECT_THROW(nn::linear_cross_entropy(h, w, targets.narrow(0, 0, 3)), Error);
}

// Trained token rows where they stand (nn::VocabMatrix): the embedding, the logits and the
// chunked loss equal the op chain on the matrix with the rows copied in (PEFT's index_copy,
// VocabMatrix::dense) in float64, values and the gradients of the hidden states, the rows and
// (when it trains too) the matrix, whose gradient at the rows' places is zero.
TEST(VocabMatrix, TrainedRowsEqualTheMatrixWithTheRowsCopiedIn) {
  torch::manual_seed(5);
  const int64_t vocab = 97, hidden = 16, seq = 29;
  const torch::Tensor weight = torch::randn({vocab, hidden}, torch::kFloat64) * 0.5;
  const torch::Tensor token_ids = torch::tensor({96, 3, 50}, torch::kInt64);  // out of order
  const torch::Tensor rows = torch::randn({3, hidden}, torch::kFloat64);
  const torch::Tensor hidden_states = torch::randn({2, seq, hidden}, torch::kFloat64);
  torch::Tensor ids = torch::randint(vocab, {2, seq}, torch::kInt64), targets = torch::randint(vocab, {2 * seq}, torch::kInt64);
  ids.index_put_({0, torch::arange(3)}, torch::tensor({96, 3, 96}));  // each trained token, one twice
  ids.index_put_({1, 5}, 50);
  targets.index_put_({torch::arange(0, 12, 3)}, torch::tensor({96, 3, 50, -100}));
  const torch::Tensor embedding_weights = torch::randn({2, seq, hidden}, torch::kFloat64);
  const torch::Tensor logit_weights = torch::randn({2, seq, vocab}, torch::kFloat64);

  struct Result {
    torch::Tensor embedded, logits, loss, d_hidden, d_rows, d_weight;
  };
  const auto run = [&](bool where_they_stand, torch::ScalarType dtype, bool weight_trains) {
    const torch::Tensor w = weight.to(dtype).clone().requires_grad_(weight_trains);
    const torch::Tensor r = rows.to(dtype == torch::kFloat64 ? dtype : torch::kFloat32).clone().requires_grad_(true);
    const torch::Tensor h = hidden_states.to(dtype).clone().requires_grad_(true);
    const nn::VocabMatrix matrix{w, token_ids, r, nn::token_slots(token_ids, vocab)};
    torch::Tensor embedded, logits;
    nn::SummedLoss loss;
    if (where_they_stand) {
      embedded = nn::embed(matrix, ids, dtype);
      logits = nn::project(h, matrix);
      loss = nn::linear_cross_entropy(h.reshape({-1, hidden}), matrix, targets, /*chunk_rows=*/7);
    } else {
      const torch::Tensor dense = matrix.dense(dtype);
      embedded = torch::embedding(dense, ids);
      logits = torch::matmul(h, dense.t());
      loss = nn::reference::linear_cross_entropy(h.reshape({-1, hidden}), dense, targets);
    }
    EXPECT_EQ(embedded.scalar_type(), dtype);
    ((embedded.to(torch::kFloat64) * embedding_weights).sum() + (logits.to(torch::kFloat64) * logit_weights).sum() +
     loss.sum.to(torch::kFloat64) * 0.75)
        .backward();
    return Result{embedded.detach(), logits.detach(), loss.sum.detach(), h.grad(), r.grad(), w.grad()};
  };
  for (const bool weight_trains : {false, true}) {
    const std::string what = weight_trains ? "matrix trained too: " : "frozen matrix: ";
    const Result expected = run(false, torch::kFloat64, weight_trains);
    const auto check = [&](const Result& actual, double tolerance, const std::string& dtype) {
      expect_close(actual.embedded, expected.embedded, tolerance, what + dtype + " embeddings");
      expect_close(actual.logits, expected.logits, tolerance, what + dtype + " logits");
      expect_close(actual.loss, expected.loss, tolerance, what + dtype + " loss");
      expect_close(actual.d_hidden, expected.d_hidden, tolerance, what + dtype + " d hidden");
      expect_close(actual.d_rows, expected.d_rows, tolerance, what + dtype + " d rows");
      EXPECT_EQ(actual.d_rows.scalar_type(), dtype == "fp64" ? torch::kFloat64 : torch::kFloat32) << "the rows' own dtype";
      ASSERT_EQ(actual.d_weight.defined(), weight_trains) << what + dtype;
      if (weight_trains) {
        expect_close(actual.d_weight, expected.d_weight, tolerance, what + dtype + " d weight");
        EXPECT_EQ(actual.d_weight.index_select(0, token_ids).abs().max().item<double>(), 0.0) << what + dtype;
      }
    };
    const Result exact = run(true, torch::kFloat64, weight_trains);
    EXPECT_TRUE(torch::equal(exact.embedded, expected.embedded)) << what << "the same rows gathered";
    check(exact, 1e-13, "fp64");
    check(run(true, torch::kFloat32, weight_trains), kFp32 * 4, "fp32");
    check(run(true, torch::kBFloat16, weight_trains), kBf16 * 2, "bf16");
  }
  EXPECT_THROW(nn::token_slots(torch::tensor({3, 7, 3}, torch::kInt64), vocab), Error);
}

TEST(Attention, PerDocumentEqualsTheDenseMaskWithSharedKvHeads) {
  torch::manual_seed(5);
  const int64_t heads = 4, kv_heads = 2, seq = 10, dim = 8;
  const torch::Tensor docs = torch::tensor({0, 0, 0, 1, 1, 1, 1, 2, 2, -1, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5}, torch::kInt64).view({2, seq});
  const auto [segments, longest] = nn::document_segments(docs);
  EXPECT_EQ(longest, seq);
  EXPECT_EQ(segments.size(0), 5) << "three documents and padding in row 0, one document in row 1";
  const torch::Tensor q = torch::randn({2, heads, seq, dim}, torch::kFloat64);
  const torch::Tensor k = torch::randn({2, kv_heads, seq, dim}, torch::kFloat64), v = torch::randn({2, kv_heads, seq, dim}, torch::kFloat64);
  // The definition: softmax over the same document's earlier positions, each K / V head
  // serving heads / kv_heads query heads.
  const torch::Tensor allowed = docs.unsqueeze(2).eq(docs.unsqueeze(1)).logical_and(torch::ones({seq, seq}, torch::kBool).tril()).unsqueeze(1);
  const torch::Tensor kr = k.repeat_interleave(heads / kv_heads, 1), vr = v.repeat_interleave(heads / kv_heads, 1);
  const torch::Tensor scores = torch::matmul(q, kr.transpose(2, 3)) / std::sqrt(static_cast<double>(dim));
  const torch::Tensor expected = torch::matmul(torch::softmax(scores.masked_fill(allowed.logical_not(), -INFINITY), -1), vr);
  // (1e-6: the eager path takes its softmax in float32, as HF does)
  expect_close(nn::segmented_attention(q, k, v, segments), expected, 1e-6, "packed rows");
  const auto [whole, whole_longest] = nn::document_segments(torch::zeros({2, seq}, torch::kInt64));
  EXPECT_EQ(whole.size(0), 2);
  const torch::Tensor causal = torch::ones({seq, seq}, torch::kBool).tril();
  const torch::Tensor one_document = torch::matmul(torch::softmax(scores.masked_fill(causal.logical_not(), -INFINITY), -1), vr);
  expect_close(nn::segmented_attention(q, k, v, whole), one_document, 1e-6, "one document per row");
}

TEST(Attention, SlidingWindowBandsEqualTheDenseWindowMaskForwardAndBackward) {
  torch::manual_seed(6);
  const int64_t heads = 4, kv_heads = 2, seq = 23, dim = 8;
  std::vector<int64_t> packed(seq, 0);  // row 0: documents of 11, 3 and 9 tokens
  for (int64_t t = 11; t < seq; ++t) packed[t] = t < 14 ? 1 : 2;
  const torch::Tensor packed_row = torch::tensor(packed, torch::kInt64).view({1, seq});
  for (const torch::Tensor& docs : {torch::cat({packed_row, torch::full({1, seq}, 7, torch::kInt64)}), torch::zeros({2, seq}, torch::kInt64)}) {
    const torch::Tensor segments = nn::document_segments(docs).first;
    for (const int64_t window : {1, 4, 5, 11, 30}) {
      const std::string what = "window " + std::to_string(window) + ", " + std::to_string(segments.size(0)) + " segments: ";
      const torch::Tensor q = torch::randn({2, heads, seq, dim}, torch::kFloat64).requires_grad_(true);
      const torch::Tensor k = torch::randn({2, kv_heads, seq, dim}, torch::kFloat64).requires_grad_(true);
      const torch::Tensor v = torch::randn({2, kv_heads, seq, dim}, torch::kFloat64).requires_grad_(true);
      const torch::Tensor grad_out = torch::randn({2, heads, seq, dim}, torch::kFloat64);
      // The definition, as HF's sliding-window mask: the same document, j <= i, i - j < window.
      const torch::Tensor position = torch::arange(seq, torch::kInt64);
      const torch::Tensor distance = position.view({-1, 1}) - position.view({1, -1});
      const torch::Tensor allowed =
          docs.unsqueeze(2).eq(docs.unsqueeze(1)).logical_and(distance.ge(0)).logical_and(distance.lt(window)).unsqueeze(1);
      const torch::Tensor scores = torch::matmul(q, k.repeat_interleave(heads / kv_heads, 1).transpose(2, 3)) / std::sqrt(static_cast<double>(dim));
      const torch::Tensor expected =
          torch::matmul(torch::softmax(scores.masked_fill(allowed.logical_not(), -INFINITY), -1), v.repeat_interleave(heads / kv_heads, 1));
      const auto expected_grads = torch::autograd::grad({expected}, {q, k, v}, {grad_out});
      const torch::Tensor actual = nn::segmented_attention(q, k, v, segments, window);
      const auto grads = torch::autograd::grad({actual}, {q, k, v}, {grad_out});
      // (1e-6: the eager path takes its softmax in float32, as HF does)
      expect_close(actual, expected, 1e-6, what + "out");
      expect_close(grads[0], expected_grads[0], 1e-6, what + "d q");
      expect_close(grads[1], expected_grads[1], 1e-6, what + "d k");
      expect_close(grads[2], expected_grads[2], 1e-6, what + "d v");
    }
  }
}

// The flash window path's plumbing on this libtorch: operators called by their schema's
// argument names, as flash_window_attention calls FlashAttention's.
TEST(NamedOpCall, CallsAnOperatorByArgumentNamesWithDefaultsAndAutograd) {
  torch::manual_seed(8);
  const torch::Tensor x = torch::randn({3, 5}, torch::kFloat64).requires_grad_(true);
  const torch::Tensor weights = torch::randn({3, 5}, torch::kFloat64);
  for (const int64_t dim : {0, 1}) {
    // Named out of the schema's order; dtype left to its default (None).
    const std::vector<c10::IValue> returns = call_op_by_argument_names("aten::softmax", "int", {{"dim", dim}, {"self", x}});
    ASSERT_EQ(returns.size(), 1u);
    const torch::Tensor y = returns[0].toTensor();
    const torch::Tensor expected = torch::softmax(x, dim);
    EXPECT_TRUE(torch::equal(y, expected)) << "dim " << dim;
    const torch::Tensor grad = torch::autograd::grad({(y * weights).sum()}, {x})[0];
    EXPECT_TRUE(torch::equal(grad, torch::autograd::grad({(expected * weights).sum()}, {x})[0])) << "dim " << dim;
  }
}

TEST(NamedOpCall, SaysWhatThisLibtorchLacks) {
  EXPECT_TRUE(op_has_arguments("aten::softmax", "int", {"self", "dim", "dtype"}));
  EXPECT_FALSE(op_has_arguments("aten::softmax", "int", {"self", "window_size_left"}));
  EXPECT_FALSE(op_has_arguments("aten::softmax", "no_such_overload", {}));
  EXPECT_FALSE(op_has_arguments("aten::no_such_op", "", {}));
  const torch::Tensor x = torch::randn({2, 2});
  const auto error_of = [](const auto& call) {
    try {
      call();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of([] { call_op_by_argument_names("aten::no_such_op", "", {}); }).find("has no operator aten::no_such_op"),
            std::string::npos);
  EXPECT_NE(error_of([&] { call_op_by_argument_names("aten::softmax", "int", {{"self", x}, {"dim", 1}, {"window", 2}}); })
                .find("aten::softmax.int in libtorch " TORCH_VERSION " has no argument 'window'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { call_op_by_argument_names("aten::softmax", "int", {{"self", x}}); }).find("argument 'dim' has no default"),
            std::string::npos);
}

TEST(FusedOps, Float64TakesTheOpChains) {
  const torch::Tensor x = torch::randn({2, 8}, torch::kFloat64), w = torch::randn({8}, torch::kFloat64);
  EXPECT_FALSE(nn::fused_ops_apply(x));
  EXPECT_TRUE(torch::equal(nn::rms_norm(x, w, 1e-6), nn::reference::rms_norm(x, w, 1e-6)));
  EXPECT_TRUE(nn::fused_ops_apply(x.to(torch::kBFloat16)));
}

}  // namespace
