// QuantState: quantize / dequantize against an independent libtorch computation, the
// bitsandbytes serialization (keys, dtypes, shapes, JSON byte for byte), bits per parameter
// measured from the serialized tensors, and loading untrusted tensors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "shardlora/kernels/check.h"
#include "shardlora/quant/quant_state.h"

using namespace shardlora::quant;
using shardlora::kernels::QuantType;

namespace {

std::map<std::string, torch::Tensor> serialize(const QuantState& state, const std::string& name = "w.weight") {
  std::map<std::string, torch::Tensor> tensors;
  for (auto& [key, tensor] : to_bnb_tensors(state, name)) tensors[key] = tensor;
  return tensors;
}

TensorLookup lookup_in(const std::map<std::string, torch::Tensor>& tensors) {
  return [&tensors](const std::string& name) -> std::optional<torch::Tensor> {
    const auto it = tensors.find(name);
    if (it == tensors.end()) return std::nullopt;
    return it->second;
  };
}

std::string load_error(const std::map<std::string, torch::Tensor>& tensors) {
  try {
    from_bnb_tensors("w.weight", lookup_in(tensors), "ckpt.safetensors");
  } catch (const shardlora::Error& error) {
    return error.what();
  }
  return "no error";
}

torch::Tensor json_tensor(const std::string& text) {
  torch::Tensor bytes = torch::empty({static_cast<int64_t>(text.size())}, torch::kUInt8);
  std::memcpy(bytes.data_ptr(), text.data(), text.size());
  return bytes;
}

// dequantize written with plain libtorch ops, as bitsandbytes' pure-PyTorch backend does it.
torch::Tensor torch_dequantize(const QuantState& state) {
  torch::Tensor absmax = state.absmax;
  if (state.nested) {
    const auto scales = state.nested_absmax.repeat_interleave(state.nested_blocksize).narrow(0, 0, state.blocks());
    absmax = state.nested_code.index({state.absmax.to(torch::kLong)}) * scales + state.nested_offset;
  }
  const torch::Tensor bytes = state.codes.view(-1).to(torch::kLong);
  const torch::Tensor nibbles = torch::stack({bytes.floor_divide(16), bytes.remainder(16)}, 1).view(-1).narrow(0, 0, state.numel());
  const torch::Tensor values = state.code.index({nibbles});
  return (values * absmax.repeat_interleave(state.blocksize).narrow(0, 0, state.numel())).view(state.shape);
}

}  // namespace

TEST(PythonFloatRepr, MatchesCPythonRepr) {
  const std::vector<std::pair<double, std::string>> cases = {
      {0.0, "0.0"}, {-0.0, "-0.0"}, {1.0, "1.0"}, {0.1, "0.1"}, {1e-05, "1e-05"}, {0.0001, "0.0001"},
      {1e16, "1e+16"}, {1.5e16, "1.5e+16"}, {123456789012345.0, "123456789012345.0"},
      {1e15, "1000000000000000.0"}, {2.5e-07, "2.5e-07"}, {0.012299999594688416, "0.012299999594688416"},
      {-3.141592502593994, "-3.141592502593994"}, {9.999999747378752e-06, "9.999999747378752e-06"},
      {12345.677734375, "12345.677734375"}, {9999999999999998.0, "9999999999999998.0"},
      {0.00012345, "0.00012345"}, {5e-324, "5e-324"}, {1.7976931348623157e308, "1.7976931348623157e+308"}};
  for (const auto& [value, text] : cases) EXPECT_EQ(python_float_repr(value), text) << text;
}

TEST(QuantState, JsonIsByteForByteWhatBitsandbytesWrites) {
  QuantState state;
  state.shape = {4096, 4096};
  state.dtype = torch::kBFloat16;
  state.nested = true;
  state.nested_offset = 0.0123f;
  EXPECT_EQ(quant_state_json(state),
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 4096], )"
            R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.012299999594688416})");
  state.nested = false;
  state.type = QuantType::FP4;
  state.blocksize = 128;
  EXPECT_EQ(quant_state_json(state), R"({"quant_type": "fp4", "blocksize": 128, "dtype": "bfloat16", "shape": [4096, 4096]})");
}

TEST(QuantState, SerializesInTransformersPrequantizedLayout) {
  const QuantState state = quantize(torch::randn({96, 64}), {QuantType::NF4, 64, true});
  const auto tensors = serialize(state, "model.layers.0.mlp.up_proj.weight");
  const std::string w = "model.layers.0.mlp.up_proj.weight";
  std::vector<std::string> keys;
  for (const auto& [key, tensor] : tensors) keys.push_back(key);
  EXPECT_EQ(keys, (std::vector<std::string>{w, w + ".absmax", w + ".nested_absmax", w + ".nested_quant_map",
                                            w + ".quant_map", w + ".quant_state.bitsandbytes__nf4"}));
  EXPECT_EQ(tensors.at(w).sizes().vec(), (std::vector<int64_t>{96 * 64 / 2, 1}));
  EXPECT_EQ(tensors.at(w).scalar_type(), torch::kUInt8);
  EXPECT_EQ(tensors.at(w + ".absmax").scalar_type(), torch::kUInt8);
  EXPECT_EQ(tensors.at(w + ".absmax").numel(), 96);
  EXPECT_EQ(tensors.at(w + ".nested_absmax").numel(), 1);
  EXPECT_EQ(tensors.at(w + ".nested_quant_map").numel(), 256);
  EXPECT_EQ(tensors.at(w + ".quant_map").numel(), 16);
  const torch::Tensor json = tensors.at(w + ".quant_state.bitsandbytes__nf4");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(json.data_ptr<uint8_t>()), json.numel()), quant_state_json(state));
}

TEST(QuantState, DequantizeEqualsPlainTorchComputation) {
  for (const bool nested : {false, true}) {
    for (const QuantType type : {QuantType::NF4, QuantType::FP4}) {
      const QuantState state = quantize(torch::randn({33, 128}).to(torch::kBFloat16), {type, 64, nested});
      EXPECT_TRUE(torch::equal(dequantize(state, torch::kFloat32), torch_dequantize(state)))
          << "nested " << nested << " type " << static_cast<int>(type);
      EXPECT_EQ(dequantize(state).scalar_type(), torch::kBFloat16) << "default: the original dtype";
    }
  }
}

TEST(QuantState, RoundTripsThroughSerializedTensors) {
  const QuantState state = quantize(torch::randn({50, 96}), {QuantType::NF4, 32, true});
  const auto tensors = serialize(state);
  const QuantState loaded = from_bnb_tensors("w.weight", lookup_in(tensors), "ckpt.safetensors");
  EXPECT_EQ(loaded.shape, state.shape);
  EXPECT_EQ(loaded.blocksize, 32);
  EXPECT_EQ(loaded.nested_offset, state.nested_offset);
  EXPECT_TRUE(torch::equal(dequantize(loaded), dequantize(state)));
}

TEST(QuantState, BitsPerParameterMeasuredFromSerializedTensors) {
  const torch::Tensor weight = torch::randn({4096, 4096}).to(torch::kBFloat16);
  for (const bool nested : {true, false}) {
    int64_t bytes = 0;
    for (const auto& [key, tensor] : serialize(quantize(weight, {QuantType::NF4, 64, nested}))) bytes += tensor.nbytes();
    const double bits = 8.0 * bytes / weight.numel();
    // 4 bits of codes + 8/64 + 32/(64*256) with double quantization, + 32/64 without.
    EXPECT_NEAR(bits, nested ? 4.127 : 4.5, 0.001) << "nested " << nested;
  }
}

TEST(QuantState, QuantizeRejectsNonFiniteWeights) {
  torch::Tensor weight = torch::randn({4, 64});
  weight[2][5] = std::numeric_limits<float>::infinity();
  try {
    quantize(weight, {});
    FAIL() << "no error";
  } catch (const shardlora::Error& error) {
    EXPECT_NE(std::string(error.what()).find("NaN or Inf (first in elements [128"), std::string::npos) << error.what();
  }
  EXPECT_THROW(quantize(torch::zeros({4}, torch::kLong), {}), shardlora::Error);
}

TEST(QuantState, AcceptsPackedCodesStoredAsAnotherDtype) {
  const QuantState state = quantize(torch::randn({16, 64}), {QuantType::NF4, 64, true});
  auto tensors = serialize(state);
  // bnb_4bit_quant_storage=bfloat16: the same bytes viewed as [(n+1)/4, 1] bfloat16.
  tensors["w.weight"] = state.codes.view(-1).view(torch::kBFloat16).view({-1, 1});
  EXPECT_TRUE(torch::equal(dequantize(from_bnb_tensors("w.weight", lookup_in(tensors), "f")), dequantize(state)));
}

TEST(QuantState, LoadingRejectsInconsistentTensorsNamingThem) {
  const QuantState state = quantize(torch::randn({16, 64}), {QuantType::NF4, 64, true});
  const auto good = serialize(state);
  auto expect_error = [&](std::map<std::string, torch::Tensor> tensors, const std::string& fragment) {
    const std::string message = load_error(tensors);
    EXPECT_NE(message.find(fragment), std::string::npos) << "expected '" << fragment << "' in: " << message;
    EXPECT_NE(message.find("ckpt.safetensors: w.weight"), std::string::npos) << message;
  };
  auto tensors = good;
  tensors.erase("w.weight.quant_state.bitsandbytes__nf4");
  expect_error(tensors, "no quant_state");
  tensors = good;
  tensors["w.weight.absmax"] = torch::zeros({15}, torch::kUInt8);
  expect_error(tensors, ".absmax: 15 elements, expected 16");
  tensors = good;
  tensors["w.weight.quant_map"] = tensors["w.weight.quant_map"] * 2;
  expect_error(tensors, "quant_map differs");
  tensors = good;
  tensors["w.weight"] = torch::zeros({100, 1}, torch::kUInt8);
  expect_error(tensors, "bytes of packed codes");
  tensors = good;
  tensors.erase("w.weight.nested_absmax");
  expect_error(tensors, "missing tensor w.weight.nested_absmax");
  tensors = good;
  tensors["w.weight.quant_state.bitsandbytes__nf4"] = json_tensor(R"({"quant_type": "fp4", "blocksize": 64})");
  expect_error(tensors, "does not match its key");
  tensors["w.weight.quant_state.bitsandbytes__nf4"] =
      json_tensor(R"({"quant_type": "nf4", "blocksize": 48, "dtype": "bfloat16", "shape": [16, 64]})");
  expect_error(tensors, "unsupported blocksize 48");
  tensors["w.weight.quant_state.bitsandbytes__nf4"] = json_tensor("{not json");
  expect_error(tensors, "not a JSON object");
  tensors["w.weight.quant_state.bitsandbytes__nf4"] = json_tensor(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "int8", "shape": [16, 64]})");
  expect_error(tensors, "unsupported dtype");
}
