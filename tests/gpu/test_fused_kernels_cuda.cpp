// The fused CUDA kernels (RMSNorm, RoPE, SwiGLU, row cross-entropy) against the scalar
// references. The device reduces rows in its own order and uses its expf / rsqrtf, so
// results agree within a few fp32 ulps before the final rounding: one ulp of the element
// dtype, plus that. Skipped, saying why, without a device.
#include <gtest/gtest.h>

#include "gpu/cuda_test_support.h"
#include "numerics/fused_op_cases.h"
#include "tolerances.h"

using namespace shardlora::kernels;
using namespace shardlora::testing;

namespace {

void expect_close(const std::vector<uint8_t>& actual, const std::vector<uint8_t>& expected, DType dtype, int64_t count,
                  double abs, const std::string& what) {
  const auto a = decoded(actual, dtype, count), e = decoded(expected, dtype, count);
  const double rel = 2 * unit_roundoff(dtype) + 1e-5;
  for (int64_t i = 0; i < count; ++i) {
    if (std::isnan(e[i])) {
      ASSERT_TRUE(std::isnan(a[i])) << what << " at " << i;
      continue;
    }
    ASSERT_NEAR(a[i], e[i], rel * std::abs(e[i]) + abs) << what << " at " << i;
  }
}

std::vector<uint8_t> float_bytes(const std::vector<float>& values) { return encode(values, DType::F32); }

TEST_F(KernelsCuda, RmsNormMatchesReference) {
  for (const int64_t cols : {int64_t{8}, int64_t{100}, int64_t{4099}}) {
    const int64_t rows = 300;
    for (const DType dtype : kFloatDTypes) {
      const auto x = encode(scaled_normal_values(rows * cols, 2.0f, 1), dtype);
      const auto w = encode(scaled_normal_values(cols, 1.0f, 2), dtype);
      const auto dy = encode(scaled_normal_values(rows * cols, 1.0f, 3), dtype);
      std::vector<uint8_t> y(x.size()), dx(x.size());
      std::vector<float> inv(rows), dw(cols);
      rms_norm_forward_ref(x.data(), w.data(), y.data(), inv.data(), {rows, cols}, 1e-6f, dtype);
      rms_norm_backward_ref(dy.data(), x.data(), w.data(), inv.data(), dx.data(), dw.data(), {rows, cols}, dtype);
      DeviceBuffer dx_(x), dw_(w), ddy(dy), dy_out(x.size()), dinv(rows * sizeof(float)), ddx(x.size()),
          ddw(cols * sizeof(float));
      rms_norm_forward(dx_.as<void>(), dw_.as<void>(), dy_out.as<void>(), dinv.as<float>(), {rows, cols}, 1e-6f, dtype,
                       Device::cuda());
      rms_norm_backward(ddy.as<void>(), dx_.as<void>(), dw_.as<void>(), dinv.as<float>(), ddx.as<void>(), ddw.as<float>(),
                        {rows, cols}, dtype, Device::cuda());
      const std::string what = std::to_string(cols) + " " + dtype_name(dtype);
      expect_close(dy_out.to_host<uint8_t>(y.size()), y, dtype, rows * cols, 1e-6, "y " + what);
      expect_close(float_bytes(dinv.to_host<float>(rows)), float_bytes(inv), DType::F32, rows, 0, "inv_rms " + what);
      expect_close(ddx.to_host<uint8_t>(dx.size()), dx, dtype, rows * cols, 1e-5, "dx " + what);
      expect_close(float_bytes(ddw.to_host<float>(cols)), float_bytes(dw), DType::F32, cols, 1e-4, "dw " + what);
    }
  }
}

TEST_F(KernelsCuda, SwigluMatchesReference) {
  const int64_t count = (int64_t{1} << 20) + 5;
  for (const DType dtype : kFloatDTypes) {
    const auto g = encode(scaled_normal_values(count, 5.0f, 4), dtype), u = encode(scaled_normal_values(count, 1.0f, 5), dtype);
    const auto dy = encode(scaled_normal_values(count, 1.0f, 6), dtype);
    std::vector<uint8_t> y(g.size()), dg(g.size()), du(g.size());
    swiglu_forward_ref(g.data(), u.data(), y.data(), count, dtype);
    swiglu_backward_ref(dy.data(), g.data(), u.data(), dg.data(), du.data(), count, dtype);
    DeviceBuffer dg_(g), du_(u), ddy(dy), dy_out(g.size());
    swiglu_forward(dg_.as<void>(), du_.as<void>(), dy_out.as<void>(), count, dtype, Device::cuda());
    expect_close(dy_out.to_host<uint8_t>(y.size()), y, dtype, count, 1e-6, std::string("y ") + dtype_name(dtype));
    swiglu_backward(ddy.as<void>(), dg_.as<void>(), du_.as<void>(), dg_.as<void>(), du_.as<void>(), count, dtype,
                    Device::cuda());  // in place
    expect_close(dg_.to_host<uint8_t>(g.size()), dg, dtype, count, 1e-6, std::string("dg ") + dtype_name(dtype));
    expect_close(du_.to_host<uint8_t>(u.size()), du, dtype, count, 1e-6, std::string("du ") + dtype_name(dtype));
  }
}

TEST_F(KernelsCuda, RopeMatchesReference) {
  const RopeShape shape{257, 8, 128};
  const int64_t count = shape.tokens * shape.heads * shape.head_dim, half = shape.head_dim / 2;
  for (const DType dtype : kFloatDTypes) {
    const auto cos = encode(scaled_normal_values(shape.tokens * half, 1.0f, 7), dtype);
    const auto sin = encode(scaled_normal_values(shape.tokens * half, 1.0f, 8), dtype);
    const auto x = encode(scaled_normal_values(count, 1.0f, 9), dtype);
    for (const RopeDirection direction : {RopeDirection::Forward, RopeDirection::Backward}) {
      std::vector<uint8_t> expected = x;
      rope_apply_ref(expected.data(), cos.data(), sin.data(), shape, direction, dtype);
      DeviceBuffer dx(x), dcos(cos), dsin(sin);
      rope_apply(dx.as<void>(), dcos.as<void>(), dsin.as<void>(), shape, direction, dtype, Device::cuda());
      expect_close(dx.to_host<uint8_t>(x.size()), expected, dtype, count, 1e-6, dtype_name(dtype));
    }
  }
}

TEST_F(KernelsCuda, CrossEntropyMatchesReference) {
  for (const int64_t vocab : {int64_t{13}, int64_t{32771}, int64_t{128256}}) {
    const int64_t rows = 37;
    const auto [values, targets] = cross_entropy_case(rows, vocab, 6.0f, 10);
    for (const DType dtype : kFloatDTypes) {
      const auto logits = encode(values, dtype);
      std::vector<uint8_t> expected = logits;
      std::vector<float> losses(rows);
      cross_entropy_rows_ref(expected.data(), targets.data(), losses.data(), {rows, vocab}, -100, true, dtype);
      DeviceBuffer dz(logits), dt(targets), dl(rows * sizeof(float));
      cross_entropy_rows(dz.as<void>(), dt.as<int64_t>(), dl.as<float>(), {rows, vocab}, -100, true, dtype, Device::cuda());
      const std::string what = std::to_string(vocab) + " " + dtype_name(dtype);
      expect_close(float_bytes(dl.to_host<float>(rows)), float_bytes(losses), DType::F32, rows, 1e-5, "loss " + what);
      expect_close(dz.to_host<uint8_t>(logits.size()), expected, dtype, rows * vocab, 1e-9, "gradient " + what);
    }
  }
}

}  // namespace
