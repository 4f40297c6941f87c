// CUDA kernels against the scalar references: bit for bit where the result is defined
// element by element (quantize, dequantize, 8-bit blockwise, ordered chunk sums, AdamW with
// 32-bit and 8-bit state), within
// the fp32 dot-product bound for gemv. Skipped, with the reason, when the build has no
// CUDA or no device is visible.
#include <gtest/gtest.h>

#include <cstring>

#include "gpu/cuda_test_support.h"
#include "numerics/adamw_cases.h"
#include "numerics/gemv_cases.h"
#include "shardlora/kernels/blockwise_8bit.h"

using namespace shardlora::kernels;
using namespace shardlora::testing;

namespace {

std::vector<int64_t> sizes_with_a_large_one() {
  std::vector<int64_t> sizes = kAwkwardSizes;
  sizes.push_back(int64_t{1} << 24 | 5);  // more blocks than one grid covers
  return sizes;
}

}  // namespace

TEST_F(KernelsCuda, Dequantize4bitEqualsReferenceBitForBit) {
  for (const QuantType type : kQuant4bitTypes) {
    for (const int64_t blocksize : {32, 64, 256, 4096}) {
      for (const int64_t numel : sizes_with_a_large_one()) {
        const auto tensor = make_random_4bit(numel, blocksize, static_cast<uint32_t>(numel + blocksize));
        const DeviceBuffer codes(tensor.codes), absmax(tensor.absmax);
        const Packed4bit on_device{type, codes.as<uint8_t>(), absmax.as<float>(), numel, blocksize};
        for (const DType dtype : kFloatDTypes) {
          auto expected = output_buffer(numel, dtype);
          auto guarded = output_buffer(numel, dtype);  // guard bytes past the end must survive
          dequantize_4bit_ref(tensor.view(type, numel, blocksize), expected.data(), dtype);
          const DeviceBuffer out(guarded);
          dequantize_4bit(on_device, out.as<void>(), dtype, Device::cuda());
          ASSERT_TRUE(out.to_host<uint8_t>(guarded.size()) == expected)
              << quant_type_traits(type).name << " blocksize " << blocksize << " numel " << numel << " "
              << dtype_name(dtype);
        }
      }
    }
  }
}

TEST_F(KernelsCuda, MisalignedBuffersStillEqualReference) {
  // The vector kernels need aligned buffers; offsets into a buffer take the element-wise ones.
  const int64_t numel = 4096 + 7, blocksize = 64;
  const auto tensor = make_random_4bit(numel + 2, blocksize, 3);
  std::vector<uint8_t> shifted_codes(tensor.codes.begin() + 1, tensor.codes.end());
  const Packed4bit host{QuantType::NF4, shifted_codes.data(), tensor.absmax.data(), numel, blocksize};
  const DeviceBuffer codes(tensor.codes), absmax(tensor.absmax);
  const Packed4bit on_device{QuantType::NF4, codes.as<uint8_t>() + 1, absmax.as<float>(), numel, blocksize};
  for (const DType dtype : kFloatDTypes) {
    auto expected = output_buffer(numel, dtype);
    dequantize_4bit_ref(host, expected.data(), dtype);
    const DeviceBuffer out(expected.size() + 16);
    dequantize_4bit(on_device, out.as<uint8_t>() + dtype_size(dtype), dtype, Device::cuda());
    const auto all = out.to_host<uint8_t>(expected.size() + 16);
    ASSERT_EQ(0, std::memcmp(all.data() + dtype_size(dtype), expected.data(), numel * dtype_size(dtype))) << dtype_name(dtype);
  }
  const GemvShape shape{64, 512, 64};
  const GemvCase gemv = make_gemv_case(QuantType::NF4, shape.rows, shape.cols, shape.blocksize, 4);
  const auto x = encode(gemv.x, DType::BF16);
  const auto expected = run_gemv_ref(gemv, QuantType::NF4, shape, x.data(), DType::BF16, DType::F32);
  std::vector<uint8_t> padded_x(2);
  padded_x.insert(padded_x.end(), x.begin(), x.end());
  const DeviceBuffer w_codes(gemv.weight.codes), w_absmax(gemv.weight.absmax), d_x(padded_x), d_y(expected.size());
  gemv_4bit({QuantType::NF4, w_codes.as<uint8_t>(), w_absmax.as<float>(), shape.rows * shape.cols, shape.blocksize},
            {shape.rows, shape.cols}, d_x.as<uint8_t>() + 2, DType::BF16, d_y.as<void>(), DType::F32, Device::cuda());
  expect_gemv_close(gemv, QuantType::NF4, shape, DType::BF16, DType::F32, expected, d_y.to_host<uint8_t>(expected.size()));
}

TEST_F(KernelsCuda, Quantize4bitEqualsReferenceBitForBit) {
  for (const QuantType type : kQuant4bitTypes) {
    for (const int64_t blocksize : {32, 64, 128, 4096}) {
      for (const int64_t numel : sizes_with_a_large_one()) {
        for (const DType dtype : kFloatDTypes) {
          const auto input = encoded_normal_values(numel, dtype, static_cast<uint32_t>(numel * 3 + blocksize));
          const auto expected = quantize_with(input.data(), dtype, type, numel, blocksize, Backend::Reference);
          const DeviceBuffer d_input(input), d_codes(expected.codes.size()), d_absmax(expected.absmax.size() * 4);
          quantize_4bit(d_input.as<void>(), dtype, {type, d_codes.as<uint8_t>(), d_absmax.as<float>(), numel, blocksize},
                        Device::cuda());
          Quantized actual{d_codes.to_host<uint8_t>(expected.codes.size()), d_absmax.to_host<float>(expected.absmax.size())};
          ASSERT_TRUE(actual == expected) << quant_type_traits(type).name << " blocksize " << blocksize << " numel "
                                          << numel << " " << dtype_name(dtype);
        }
      }
    }
  }
}

TEST_F(KernelsCuda, Blockwise8bitAndChunkSumsEqualReferenceBitForBit) {
  for (const QuantType map : {QuantType::DYNAMIC8_SIGNED, QuantType::DYNAMIC8_UNSIGNED}) {
    for (const int64_t numel : sizes_with_a_large_one()) {
      auto values = normal_values(numel, static_cast<uint32_t>(numel + 1));
      if (map == QuantType::DYNAMIC8_UNSIGNED) for (auto& v : values) v = std::fabs(v);
      const Blockwise8bit shape{map, numel, 256};
      const size_t blocks = static_cast<size_t>((numel + 255) / 256);
      std::vector<uint8_t> codes(numel);
      std::vector<float> absmax(blocks), dequantized(numel);
      std::vector<double> sums(blocks);
      quantize_8bit_blockwise_ref(values.data(), 0.25f, shape, codes.data(), absmax.data());
      dequantize_8bit_blockwise_ref(codes.data(), absmax.data(), 0.25f, shape, dequantized.data());
      chunk_sums_f64_ref(values.data(), numel, 256, sums.data());

      const DeviceBuffer d_values(values), d_codes(codes.size()), d_absmax(blocks * 4), d_out(numel * 4), d_sums(blocks * 8);
      quantize_8bit_blockwise(d_values.as<float>(), 0.25f, shape, d_codes.as<uint8_t>(), d_absmax.as<float>(), Device::cuda());
      ASSERT_EQ(d_codes.to_host<uint8_t>(codes.size()), codes) << numel;
      const auto absmax_cuda = d_absmax.to_host<float>(blocks);
      ASSERT_EQ(0, std::memcmp(absmax_cuda.data(), absmax.data(), blocks * 4)) << numel;
      dequantize_8bit_blockwise(d_codes.as<uint8_t>(), d_absmax.as<float>(), 0.25f, shape, d_out.as<float>(), Device::cuda());
      const auto out_cuda = d_out.to_host<float>(numel);
      ASSERT_EQ(0, std::memcmp(out_cuda.data(), dequantized.data(), numel * 4)) << numel;
      if (numel == 0) continue;
      chunk_sums_f64(d_values.as<float>(), numel, 256, d_sums.as<double>(), Device::cuda());
      const auto sums_cuda = d_sums.to_host<double>(blocks);
      ASSERT_EQ(0, std::memcmp(sums_cuda.data(), sums.data(), blocks * 8)) << numel;
    }
  }
}

TEST_F(KernelsCuda, Gemv4bitMatchesReferenceWithinDotProductBound) {
  std::vector<GemvShape> shapes = kGemvShapes;
  shapes.push_back({4096, 4096, 64});
  shapes.push_back({1024, 14336, 64});
  for (const auto& shape : shapes) {
    for (const QuantType type : kQuant4bitTypes) {
      const GemvCase gemv = make_gemv_case(type, shape.rows, shape.cols, shape.blocksize, 13);
      const DeviceBuffer codes(gemv.weight.codes), absmax(gemv.weight.absmax);
      const Packed4bit on_device{type, codes.as<uint8_t>(), absmax.as<float>(), shape.rows * shape.cols, shape.blocksize};
      for (const DType x_dtype : kFloatDTypes) {
        for (const DType y_dtype : kFloatDTypes) {
          const auto x = encode(gemv.x, x_dtype);
          const auto expected = run_gemv_ref(gemv, type, shape, x.data(), x_dtype, y_dtype);
          const DeviceBuffer d_x(x), d_y(expected.size());
          gemv_4bit(on_device, {shape.rows, shape.cols}, d_x.as<void>(), x_dtype, d_y.as<void>(), y_dtype, Device::cuda());
          expect_gemv_close(gemv, type, shape, x_dtype, y_dtype, expected, d_y.to_host<uint8_t>(expected.size()));
        }
      }
    }
  }
}

TEST_F(KernelsCuda, AdamWEqualsReferenceBitForBit) {
  for (const int64_t numel : {int64_t{1}, int64_t{255}, int64_t{4097}, int64_t{1} << 20 | 3}) {
    AdamWProblem expected = random_adamw_problem(numel, 11);
    DeviceBuffer param(expected.param), grad(expected.grad), m(expected.m), v(expected.v);
    DeviceBuffer param8(expected.param), m_codes(expected.m_codes), m_absmax(expected.m_absmax),
        v_codes(expected.v_codes), v_absmax(expected.v_absmax);
    AdamWProblem expected8 = expected;
    for (int64_t t = 1; t <= 3; ++t) {
      adamw_step_32bit_ref(expected.param.data(), expected.grad.data(), expected.state32(), numel, adamw_scalars(t));
      adamw_step_32bit(param.as<float>(), grad.as<float>(), {m.as<float>(), v.as<float>()}, numel, adamw_scalars(t),
                       Device::cuda());
      adamw_step_8bit_ref(expected8.param.data(), expected8.grad.data(), expected8.state8(), numel, adamw_scalars(t));
      adamw_step_8bit(param8.as<float>(), grad.as<float>(),
                      {m_codes.as<uint8_t>(), m_absmax.as<float>(), v_codes.as<uint8_t>(), v_absmax.as<float>()}, numel,
                      adamw_scalars(t), Device::cuda());
    }
    const size_t blocks = static_cast<size_t>(adamw_8bit_blocks(numel));
    EXPECT_EQ(param.to_host<float>(numel), expected.param) << numel;
    EXPECT_EQ(m.to_host<float>(numel), expected.m) << numel;
    EXPECT_EQ(v.to_host<float>(numel), expected.v) << numel;
    EXPECT_EQ(param8.to_host<float>(numel), expected8.param) << numel;
    EXPECT_EQ(m_codes.to_host<uint8_t>(numel), expected8.m_codes) << numel;
    EXPECT_EQ(v_codes.to_host<uint8_t>(numel), expected8.v_codes) << numel;
    EXPECT_EQ(m_absmax.to_host<float>(blocks), expected8.m_absmax) << numel;
    EXPECT_EQ(v_absmax.to_host<float>(blocks), expected8.v_absmax) << numel;
  }
}
