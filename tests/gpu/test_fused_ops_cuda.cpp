// The fused ops on a GPU (their CUDA kernels through the autograd functions of
// nn/fused_ops.h) against the op chains they replace in float64 on the CPU, forward and every
// gradient; and attention per document (SDPA with is_causal: FlashAttention for bf16) against
// the dense-mask definition, and the sliding window through FlashAttention's window
// arguments forward and backward. Skipped without a CUDA device.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "fused_op_checks.h"
#include "shardlora/kernels/device.h"
#include "shardlora/nn/flash_attention.h"
#include "shardlora/nn/fused_ops.h"
#include "shardlora/nn/llama.h"

using namespace shardlora;
using namespace shardlora::testing;

namespace {

class FusedOpsCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (or a libtorch without CUDA)";
  }
  const torch::Device gpu{torch::kCUDA, 0};
};

TEST_F(FusedOpsCuda, ElementwiseOpsMatchTheirOpChains) {
  torch::manual_seed(1);
  const std::vector<torch::Tensor> norm_inputs = {torch::randn({3, 50, 4096}, torch::kFloat64) * 3, torch::randn({4096}, torch::kFloat64)};
  const std::vector<torch::Tensor> mlp_inputs = {torch::randn({2, 50, 14336}, torch::kFloat64) * 4, torch::randn({2, 50, 14336}, torch::kFloat64)};
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    const double rel = dtype == torch::kFloat32 ? 1e-5 : kBf16;  // the device's expf and rsqrtf: a few fp32 ulps
    const std::string what = torch::toString(dtype);
    check_against_reference([](const auto& t) { return nn::rms_norm(t[0], t[1], 1e-5); },
                            [](const auto& t) { return nn::reference::rms_norm(t[0], t[1], 1e-5); }, norm_inputs, dtype, rel,
                            "rmsnorm " + what, gpu);
    check_against_reference([](const auto& t) { return nn::swiglu(t[0], t[1]); },
                            [](const auto& t) { return nn::reference::swiglu(t[0], t[1]); }, mlp_inputs, dtype, rel, "swiglu " + what,
                            gpu);
    const int64_t heads = 32, head_dim = 128;
    const torch::Tensor angles = torch::randn({2, 50, head_dim / 2}, torch::kFloat64) * 30;
    const torch::Tensor cos = angles.cos().to(dtype), sin = angles.sin().to(dtype);
    check_against_reference([&](const auto& t) { return nn::apply_rope(t[0], cos.to(gpu), sin.to(gpu), heads); },
                            [&](const auto& t) {
                              return nn::reference::apply_rope(t[0], cos.to(torch::kFloat64), sin.to(torch::kFloat64), heads);
                            },
                            {torch::randn({2, 50, heads * head_dim}, torch::kFloat64)}, dtype, rel, "rope " + what, gpu);
  }
}

TEST_F(FusedOpsCuda, ChunkedLinearCrossEntropyMatchesTheWholeLoss) {
  torch::manual_seed(2);
  const int64_t rows = 1500, hidden = 256, vocab = 128256;
  const torch::Tensor h = torch::randn({rows, hidden}, torch::kFloat64), w = torch::randn({vocab, hidden}, torch::kFloat64) * 0.1;
  torch::Tensor targets = torch::randint(vocab, {rows}, torch::kInt64);
  targets.index_put_({torch::arange(0, rows, 3)}, -100);
  const torch::Tensor hr = h.clone().requires_grad_(true);
  const nn::SummedLoss expected = nn::reference::linear_cross_entropy(hr, w, targets);
  expected.sum.backward();
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    const torch::Tensor hg = h.to(gpu, dtype).requires_grad_(true);
    const nn::SummedLoss loss = nn::linear_cross_entropy(hg, w.to(gpu, dtype), targets.to(gpu));
    loss.sum.backward();
    const double rel = dtype == torch::kFloat32 ? 1e-4 : kBf16;  // cuBLAS may use TF32 for the fp32 products
    EXPECT_EQ(loss.count.item<int64_t>(), expected.count.item<int64_t>());
    expect_close(loss.sum, expected.sum, rel, "loss " + std::string(torch::toString(dtype)));
    expect_close(hg.grad(), hr.grad(), rel * 5, "d hidden " + std::string(torch::toString(dtype)));
  }
}

// Trained token rows where they stand (nn::VocabMatrix) on the device, against the rows
// copied into the matrix (VocabMatrix::dense) in float64 on the CPU.
TEST_F(FusedOpsCuda, TrainedTokenRowsMatchTheMatrixWithTheRowsCopiedIn) {
  torch::manual_seed(3);
  const int64_t rows = 700, hidden = 128, vocab = 32000;
  const torch::Tensor w = torch::randn({vocab, hidden}, torch::kFloat64) * 0.1, h = torch::randn({rows, hidden}, torch::kFloat64);
  const torch::Tensor token_ids = torch::tensor({31999, 7, 20000}, torch::kInt64), trained = torch::randn({3, hidden}, torch::kFloat64);
  torch::Tensor ids = torch::randint(vocab, {rows}, torch::kInt64), targets = torch::randint(vocab, {rows}, torch::kInt64);
  ids.index_put_({torch::arange(0, rows, 5)}, 7);
  targets.index_put_({torch::arange(0, rows, 7)}, 31999);
  const auto run = [&](torch::Device device, torch::ScalarType dtype, bool where_they_stand) {
    const torch::Tensor r = trained.to(device, dtype == torch::kFloat64 ? dtype : torch::kFloat32).requires_grad_(true);
    const torch::Tensor hd = h.to(device, dtype).requires_grad_(true);
    const nn::VocabMatrix matrix{w.to(device, dtype), token_ids.to(device), r, nn::token_slots(token_ids.to(device), vocab)};
    const torch::Tensor embedded = where_they_stand ? nn::embed(matrix, ids.to(device), dtype) : torch::embedding(matrix.dense(dtype), ids);
    const nn::SummedLoss loss = where_they_stand ? nn::linear_cross_entropy(hd + embedded, matrix, targets.to(device))
                                                 : nn::reference::linear_cross_entropy(hd + embedded, matrix.dense(dtype), targets);
    loss.sum.backward();
    return std::make_tuple(loss.sum.detach(), hd.grad(), r.grad());
  };
  const auto [expected, expected_dh, expected_dr] = run(torch::kCPU, torch::kFloat64, false);
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    const auto [loss, dh, dr] = run(gpu, dtype, true);
    const double rel = dtype == torch::kFloat32 ? 1e-4 : kBf16;
    const std::string what = torch::toString(dtype);
    expect_close(loss, expected, rel, "loss " + what);
    expect_close(dh, expected_dh, rel * 5, "d hidden " + what);
    expect_close(dr, expected_dr, rel * 5, "d rows " + what);
  }
}

TEST_F(FusedOpsCuda, AttentionPerDocumentMatchesTheDenseMask) {
  torch::manual_seed(3);
  const int64_t heads = 32, kv_heads = 8, seq = 512, dim = 128;
  torch::Tensor docs = torch::zeros({2, seq}, torch::kInt64);
  docs[0].narrow(0, 200, 312).fill_(1);
  docs[0].narrow(0, 450, 62).fill_(-1);  // padding at the end of row 0
  const auto [segments, longest] = nn::document_segments(docs);
  const torch::Tensor q = torch::randn({2, heads, seq, dim}, torch::kFloat64);
  const torch::Tensor k = torch::randn({2, kv_heads, seq, dim}, torch::kFloat64), v = torch::randn({2, kv_heads, seq, dim}, torch::kFloat64);
  const torch::Tensor distance = torch::arange(seq).view({-1, 1}) - torch::arange(seq).view({1, -1});
  const torch::Tensor scores =
      torch::matmul(q, k.repeat_interleave(heads / kv_heads, 1).transpose(2, 3)) / std::sqrt(static_cast<double>(dim));
  for (const int64_t window : {0, 96}) {  // none; a sliding window shorter than the documents
    torch::Tensor allowed = docs.unsqueeze(2).eq(docs.unsqueeze(1)).logical_and(distance.ge(0));
    if (window > 0) allowed = allowed.logical_and(distance.lt(window));
    allowed = allowed.unsqueeze(1);
    const torch::Tensor expected =
        torch::matmul(torch::softmax(scores.masked_fill(allowed.logical_not(), -INFINITY), -1), v.repeat_interleave(heads / kv_heads, 1));
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      const torch::Tensor out = nn::segmented_attention(q.to(gpu, dtype), k.to(gpu, dtype), v.to(gpu, dtype), segments, window);
      expect_close(out, expected, dtype == torch::kFloat32 ? 1e-3 : kBf16,
                   "attention, window " + std::to_string(window) + ", " + std::string(torch::toString(dtype)));
    }
  }
}

TEST_F(FusedOpsCuda, FlashWindowMatchesTheDenseWindowMaskForwardAndBackward) {
  const bool flash_expected = (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)) &&
                              kernels::cuda_compute_capability(0) >= 80;
  const torch::Tensor probe = torch::zeros({1, 4, 8, 128}, torch::TensorOptions(torch::kBFloat16).device(gpu));
  ASSERT_EQ(nn::flash_window_attention_applies(probe), flash_expected) << "libtorch " << TORCH_VERSION;
  if (!flash_expected) GTEST_SKIP() << "FlashAttention's window needs libtorch 2.5 and sm_80; the window runs in bands";
  torch::manual_seed(4);
  const int64_t heads = 32, kv_heads = 8, seq = 640, dim = 128;
  const torch::Tensor q = torch::randn({2, heads, seq, dim}, torch::kFloat64).requires_grad_(true);
  const torch::Tensor k = torch::randn({2, kv_heads, seq, dim}, torch::kFloat64).requires_grad_(true);
  const torch::Tensor v = torch::randn({2, kv_heads, seq, dim}, torch::kFloat64).requires_grad_(true);
  const torch::Tensor grad_out = torch::randn({2, heads, seq, dim}, torch::kFloat64);
  const torch::Tensor distance = torch::arange(seq).view({-1, 1}) - torch::arange(seq).view({1, -1});
  for (const int64_t window : {1, 96, 257}) {
    const std::string what = "window " + std::to_string(window) + ": ";
    const torch::Tensor allowed = distance.ge(0).logical_and(distance.lt(window)).view({1, 1, seq, seq});
    const torch::Tensor scores =
        torch::matmul(q, k.repeat_interleave(heads / kv_heads, 1).transpose(2, 3)) / std::sqrt(static_cast<double>(dim));
    const torch::Tensor expected =
        torch::matmul(torch::softmax(scores.masked_fill(allowed.logical_not(), -INFINITY), -1), v.repeat_interleave(heads / kv_heads, 1));
    const auto expected_grads = torch::autograd::grad({expected}, {q, k, v}, {grad_out});
    // As the model hands them over: transposed views of [B, T, heads, D].
    const auto leaf = [&](const torch::Tensor& t) {
      return t.detach().transpose(1, 2).contiguous().to(gpu, torch::kBFloat16).requires_grad_(true);
    };
    const torch::Tensor lq = leaf(q), lk = leaf(k), lv = leaf(v);
    const torch::Tensor out = nn::flash_window_attention(lq.transpose(1, 2), lk.transpose(1, 2), lv.transpose(1, 2), window);
    auto grads = torch::autograd::grad({out}, {lq, lk, lv}, {grad_out.to(gpu, torch::kBFloat16)});
    for (torch::Tensor& g : grads) g = g.transpose(1, 2);
    expect_close(out, expected, kBf16, what + "out");
    expect_close(grads[0], expected_grads[0], kBf16 * 5, what + "d q");
    expect_close(grads[1], expected_grads[1], kBf16 * 5, what + "d k");
    expect_close(grads[2], expected_grads[2], kBf16 * 5, what + "d v");
  }
}

}  // namespace
