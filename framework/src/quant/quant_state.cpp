#include "shardlora/quant/quant_state.h"

#include <torch/torch.h>

#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>

#include "shardlora/kernels/blockwise_8bit.h"
#include "shardlora/kernels/check.h"
#include "shardlora/kernels/dequantize_4bit.h"
#include "shardlora/kernels/quantize_4bit.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::quant {
namespace {

using kernels::QuantType;

torch::Tensor table_tensor(const kernels::QuantTypeTraits& traits) {
  return torch::from_blob(const_cast<float*>(traits.code), {traits.code_count}, torch::kFloat32).clone();
}

kernels::Blockwise8bit nested_shape(const QuantState& state) {
  return {QuantType::DYNAMIC8_SIGNED, state.blocks(), state.nested_blocksize, state.nested_code.data_ptr<float>()};
}

std::string quant_state_key(const QuantState& state) {
  return std::string("quant_state.bitsandbytes__") + kernels::quant_type_traits(state.type).name;
}

// Checks a loaded tensor against the dtype and element count the state implies.
void expect_tensor(const torch::Tensor& tensor, c10::ScalarType dtype, int64_t numel, const std::string& where) {
  SHARDLORA_CHECK(tensor.scalar_type() == dtype, where, ": dtype ", c10::toString(tensor.scalar_type()), ", expected ",
                  c10::toString(dtype));
  SHARDLORA_CHECK(tensor.numel() == numel, where, ": ", tensor.numel(), " elements, expected ", numel);
}

}  // namespace

int64_t QuantState::numel() const {
  int64_t count = 1;
  for (const int64_t dim : shape) count *= dim;
  return count;
}

int64_t QuantState::storage_bytes() const {
  int64_t bytes = codes.nbytes() + absmax.nbytes() + code.nbytes();
  if (nested) bytes += nested_absmax.nbytes() + nested_code.nbytes();
  return bytes;
}

QuantState state_layout(const QuantConfig& config, std::vector<int64_t> shape, c10::ScalarType dtype, torch::Device device) {
  QuantState state;
  state.type = config.type;
  state.blocksize = config.blocksize;
  state.shape = std::move(shape);
  state.dtype = dtype;
  state.code = table_tensor(kernels::quant_type_traits(config.type)).to(device);
  state.nested = config.double_quant;
  if (state.nested) state.nested_code = table_tensor(kernels::quant_type_traits(QuantType::DYNAMIC8_SIGNED));
  return state;
}

QuantState quantize(const torch::Tensor& weight, const QuantConfig& config) {
  SHARDLORA_CHECK(is_float_type(weight.scalar_type()), "cannot quantize a ", c10::toString(weight.scalar_type()),
                  " tensor (float32, float16 or bfloat16 only)");
  const torch::Tensor input = weight.contiguous();
  QuantState state = state_layout(config, input.sizes().vec(), input.scalar_type(), input.device());
  const int64_t numel = input.numel();
  const auto bytes = torch::TensorOptions().dtype(torch::kUInt8).device(input.device());
  const auto floats = torch::TensorOptions().dtype(torch::kFloat32).device(input.device());
  state.codes = torch::empty({(numel + 1) / 2, 1}, bytes);
  torch::Tensor absmax = torch::empty({(numel + config.blocksize - 1) / config.blocksize}, floats);
  kernels::quantize_4bit(input.data_ptr(), to_kernels_dtype(input.scalar_type()),
                         {config.type, state.codes.data_ptr<uint8_t>(), absmax.data_ptr<float>(), numel, config.blocksize},
                         kernel_device(input));
  check_finite_absmax(absmax, config.blocksize, 0);
  if (!config.double_quant) {
    state.absmax = absmax;
    return state;
  }
  const int64_t blocks = absmax.numel();
  const int64_t chunks = (blocks + state.nested_blocksize - 1) / state.nested_blocksize;
  torch::Tensor sums = torch::empty({chunks}, floats.dtype(torch::kFloat64));
  kernels::chunk_sums_f64(absmax.data_ptr<float>(), blocks, state.nested_blocksize, sums.data_ptr<double>(), kernel_device(absmax));
  const torch::Tensor host_sums = sums.cpu();
  state.nested_offset = kernels::absmax_mean(host_sums.data_ptr<double>(), chunks, blocks);
  state.absmax = torch::empty({blocks}, bytes);
  state.nested_absmax = torch::empty({chunks}, floats);
  kernels::quantize_8bit_blockwise(absmax.data_ptr<float>(), state.nested_offset, nested_shape(state),
                                   state.absmax.data_ptr<uint8_t>(), state.nested_absmax.data_ptr<float>(), kernel_device(absmax));
  return state;
}

void check_finite_absmax(const torch::Tensor& absmax, int64_t blocksize, int64_t first_element) {
  const torch::Tensor bad = torch::nonzero(torch::isfinite(absmax).logical_not());
  SHARDLORA_CHECK(bad.numel() == 0, "weight holds NaN or Inf (first in elements [",
                  first_element + (bad.numel() ? bad[0].item<int64_t>() * blocksize : 0), ", +", blocksize, "))");
}

torch::Tensor absmax_fp32(const QuantState& state) {
  if (!state.nested) return state.absmax;
  torch::Tensor absmax = torch::empty({state.blocks()}, state.nested_absmax.options());
  kernels::dequantize_8bit_blockwise(state.absmax.data_ptr<uint8_t>(), state.nested_absmax.data_ptr<float>(),
                                     state.nested_offset, nested_shape(state), absmax.data_ptr<float>(),
                                     kernel_device(state.absmax));
  return absmax;
}

torch::Tensor dequantize(const QuantState& state, std::optional<c10::ScalarType> dtype) {
  const c10::ScalarType out_type = dtype.value_or(state.dtype);
  const torch::Tensor absmax = absmax_fp32(state);
  torch::Tensor out = torch::empty(state.shape, torch::TensorOptions().dtype(out_type).device(state.codes.device()));
  kernels::dequantize_4bit({state.type, state.codes.data_ptr<uint8_t>(), absmax.data_ptr<float>(), state.numel(), state.blocksize},
                           out.data_ptr(), to_kernels_dtype(out_type), kernel_device(out));
  return out;
}

std::string python_float_repr(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";  // as json.dumps writes them
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::scientific);
  const std::string scientific(buffer, result.ptr);  // "-d.ddde+XX", shortest round trip
  const size_t e = scientific.find('e');
  const bool negative = scientific[0] == '-';
  std::string digits;
  for (size_t i = negative ? 1 : 0; i < e; ++i) {
    if (scientific[i] != '.') digits += scientific[i];
  }
  const int exponent = std::stoi(scientific.substr(e + 1));
  std::string text = negative ? "-" : "";
  if (exponent < -4 || exponent >= 16) {
    text += digits.substr(0, 1);
    if (digits.size() > 1) text += "." + digits.substr(1);
    const int magnitude = exponent < 0 ? -exponent : exponent;
    text += std::string("e") + (exponent < 0 ? "-" : "+") + (magnitude < 10 ? "0" : "") + std::to_string(magnitude);
  } else if (exponent < 0) {
    text += "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
  } else {
    const size_t integer_digits = static_cast<size_t>(exponent) + 1;
    if (digits.size() <= integer_digits) {
      text += digits + std::string(integer_digits - digits.size(), '0') + ".0";
    } else {
      text += digits.substr(0, integer_digits) + "." + digits.substr(integer_digits);
    }
  }
  return text;
}

std::string quant_state_json(const QuantState& state) {
  // json.dumps defaults: ", " and ": " separators, insertion order of QuantState.as_dict.
  std::string shape = "[";
  for (size_t i = 0; i < state.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(state.shape[i]);
  shape += "]";
  std::string text = std::string("{\"quant_type\": \"") + kernels::quant_type_traits(state.type).name +
                     "\", \"blocksize\": " + std::to_string(state.blocksize) + ", \"dtype\": \"" +
                     torch_dtype_name(state.dtype) + "\", \"shape\": " + shape;
  if (state.nested) {
    text += ", \"nested_blocksize\": " + std::to_string(state.nested_blocksize) +
            ", \"nested_dtype\": \"float32\", \"nested_offset\": " + python_float_repr(state.nested_offset);
  }
  return text + "}";
}

std::vector<std::pair<std::string, torch::Tensor>> to_bnb_tensors(const QuantState& state, const std::string& weight_name) {
  const std::string json = quant_state_json(state);
  torch::Tensor json_bytes = torch::empty({static_cast<int64_t>(json.size())}, torch::kUInt8);
  std::memcpy(json_bytes.data_ptr<uint8_t>(), json.data(), json.size());
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {weight_name, state.codes},
      {weight_name + ".absmax", state.absmax},
      {weight_name + ".quant_map", state.code},
  };
  if (state.nested) {
    tensors.emplace_back(weight_name + ".nested_absmax", state.nested_absmax);
    tensors.emplace_back(weight_name + ".nested_quant_map", state.nested_code);
  }
  tensors.emplace_back(weight_name + "." + quant_state_key(state), json_bytes);
  return tensors;
}

bool is_bnb_4bit_weight(const std::string& name, const TensorLookup& lookup) {
  return lookup(name + ".quant_state.bitsandbytes__nf4").has_value() ||
         lookup(name + ".quant_state.bitsandbytes__fp4").has_value();
}

QuantState from_bnb_tensors(const std::string& weight_name, const TensorLookup& lookup, const std::string& label) {
  const std::string where = label + ": " + weight_name;
  QuantState state;
  std::optional<torch::Tensor> json_tensor;
  for (const QuantType type : {QuantType::NF4, QuantType::FP4}) {
    state.type = type;
    json_tensor = lookup(weight_name + "." + quant_state_key(state));
    if (json_tensor) break;
  }
  SHARDLORA_CHECK(json_tensor, where, ": no quant_state.bitsandbytes__nf4 or __fp4 tensor (not a bnb 4-bit weight)");
  SHARDLORA_CHECK(json_tensor->scalar_type() == torch::kUInt8 && json_tensor->dim() == 1, where,
                  ": quant_state must be a 1-D uint8 tensor");
  const torch::Tensor json_bytes = json_tensor->contiguous().cpu();
  const auto* text = reinterpret_cast<const char*>(json_bytes.data_ptr<uint8_t>());
  const auto fields = nlohmann::json::parse(text, text + json_bytes.numel(), nullptr, /*allow_exceptions=*/false);
  SHARDLORA_CHECK(!fields.is_discarded() && fields.is_object(), where, ": quant_state is not a JSON object");
  auto field = [&](const char* key) -> const nlohmann::json& {
    const auto it = fields.find(key);
    SHARDLORA_CHECK(it != fields.end(), where, ": quant_state has no '", key, "'");
    return *it;
  };
  const auto& quant_type = field("quant_type");
  SHARDLORA_CHECK(quant_type.is_string() && quant_type.get<std::string>() == kernels::quant_type_traits(state.type).name,
                  where, ": quant_state quant_type ", quant_type.dump(), " does not match its key");
  const auto& blocksize = field("blocksize");
  SHARDLORA_CHECK(blocksize.is_number_unsigned() && kernels::is_valid_4bit_blocksize(blocksize.get<int64_t>()), where,
                  ": unsupported blocksize ", blocksize.dump());
  state.blocksize = blocksize.get<int64_t>();
  const auto& dtype = field("dtype");
  const auto parsed_dtype = dtype.is_string() ? scalar_type_from_name(dtype.get<std::string>()) : std::nullopt;
  SHARDLORA_CHECK(parsed_dtype && is_float_type(*parsed_dtype), where, ": unsupported dtype ", dtype.dump());
  state.dtype = *parsed_dtype;
  const auto& shape = field("shape");
  SHARDLORA_CHECK(shape.is_array() && !shape.empty(), where, ": quant_state shape is not a list");
  for (const auto& dim : shape) {
    SHARDLORA_CHECK(dim.is_number_unsigned() && dim.get<uint64_t>() < (uint64_t{1} << 40), where, ": bad shape ", shape.dump());
    state.shape.push_back(dim.get<int64_t>());
  }
  SHARDLORA_CHECK(state.numel() < (int64_t{1} << 40), where, ": shape ", shape.dump(), " is too large");

  auto tensor = [&](const std::string& suffix) {
    const auto found = lookup(weight_name + suffix);
    SHARDLORA_CHECK(found, where, ": missing tensor ", weight_name + suffix);
    return found->contiguous();
  };
  // The packed bytes may be stored in another dtype (bnb_4bit_quant_storage): reinterpret.
  const torch::Tensor packed = tensor("");
  const int64_t packed_bytes = packed.numel() * static_cast<int64_t>(packed.element_size());
  const int64_t needed = (state.numel() + 1) / 2;
  SHARDLORA_CHECK(packed_bytes >= needed && packed_bytes < needed + static_cast<int64_t>(packed.element_size()) + 1, where,
                  ": ", packed_bytes, " bytes of packed codes for ", state.numel(), " elements (expected ", needed, ")");
  state.codes = packed.view(-1).view(torch::kUInt8).narrow(0, 0, needed).reshape({needed, 1});
  state.code = tensor(".quant_map");
  expect_tensor(state.code, torch::kFloat32, 16, where + ".quant_map");
  SHARDLORA_CHECK(torch::equal(state.code.cpu(), table_tensor(kernels::quant_type_traits(state.type))), where,
                  ".quant_map differs from the standard ", kernels::quant_type_traits(state.type).name, " table");
  state.nested = fields.contains("nested_offset");
  state.absmax = tensor(".absmax");
  if (!state.nested) {
    expect_tensor(state.absmax, torch::kFloat32, state.blocks(), where + ".absmax");
    return state;
  }
  const auto& nested_blocksize = field("nested_blocksize");
  SHARDLORA_CHECK(nested_blocksize.is_number_unsigned() &&
                      kernels::is_valid_4bit_blocksize(nested_blocksize.get<int64_t>()) && nested_blocksize.get<int64_t>() >= 64,
                  where, ": unsupported nested_blocksize ", nested_blocksize.dump());
  state.nested_blocksize = nested_blocksize.get<int64_t>();
  const auto& offset = field("nested_offset");
  SHARDLORA_CHECK(offset.is_number() && std::isfinite(offset.get<double>()), where, ": bad nested_offset ", offset.dump());
  state.nested_offset = static_cast<float>(offset.get<double>());
  expect_tensor(state.absmax, torch::kUInt8, state.blocks(), where + ".absmax");
  state.nested_absmax = tensor(".nested_absmax");
  expect_tensor(state.nested_absmax, torch::kFloat32, (state.blocks() + state.nested_blocksize - 1) / state.nested_blocksize,
                where + ".nested_absmax");
  state.nested_code = tensor(".nested_quant_map").cpu();
  expect_tensor(state.nested_code, torch::kFloat32, 256, where + ".nested_quant_map");
  return state;
}

}  // namespace shardlora::quant
