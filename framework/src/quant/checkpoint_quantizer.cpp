#include "shardlora/quant/checkpoint_quantizer.h"

#include <torch/torch.h>

#include <regex>

#include "shardlora/io/checkpoint_rewriter.h"
#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/kernels/check.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::quant {
namespace {

const std::regex& decoder_weight_pattern() {
  // A causal LM's, or a multimodal model's language model in either naming (llama_config.h).
  static const std::regex pattern(R"(^(?:model\.|model\.language_model\.|language_model\.model\.)layers\.(\d+)\..+\.weight$)");
  return pattern;
}

nlohmann::json quantized_config(nlohmann::json config, const CheckpointQuantizeOptions& options) {
  const std::string compute = torch_dtype_name(options.compute_dtype);
  // transformers' BitsAndBytesConfig.to_dict() for load_in_4bit.
  config["quantization_config"] = {
      {"_load_in_4bit", true},
      {"_load_in_8bit", false},
      {"bnb_4bit_compute_dtype", compute},
      {"bnb_4bit_quant_storage", "uint8"},
      {"bnb_4bit_quant_type", kernels::quant_type_traits(options.quant.type).name},
      {"bnb_4bit_use_double_quant", options.quant.double_quant},
      {"llm_int8_enable_fp32_cpu_offload", false},
      {"llm_int8_has_fp16_weight", false},
      {"llm_int8_skip_modules", nullptr},
      {"llm_int8_threshold", 6.0},
      {"load_in_4bit", true},
      {"load_in_8bit", false},
      {"quant_method", "bitsandbytes"},
  };
  config["torch_dtype"] = compute;
  return config;
}

}  // namespace

bool is_decoder_linear_weight(const std::string& name, size_t rank) {
  return rank == 2 && std::regex_match(name, decoder_weight_pattern());
}

CheckpointQuantizeReport quantize_checkpoint(const std::string& in_dir, const std::string& out_dir,
                                             const CheckpointQuantizeOptions& options) {
  const io::HfCheckpoint checkpoint = io::open_hf_checkpoint(in_dir);
  config_string(checkpoint, "model_type");
  int64_t layers = 0;
  if (const auto text = checkpoint.config.find("text_config"); text != checkpoint.config.end()) {  // a multimodal model's language model
    const auto count = text->is_object() ? text->find("num_hidden_layers") : text->end();
    SHARDLORA_CHECK(text->is_object() && count != text->end() && count->is_number_integer() && count->get<int64_t>() > 0,
                    checkpoint.path(io::kConfigFile), ": text_config.num_hidden_layers must be a positive integer");
    layers = count->get<int64_t>();
  } else {
    layers = io::config_positive_int(checkpoint, "num_hidden_layers");
  }
  SHARDLORA_CHECK(!checkpoint.config.contains("quantization_config"), checkpoint.path(io::kConfigFile),
                  ": already has a quantization_config (the checkpoint is quantized)");
  SHARDLORA_CHECK(is_float_type(options.compute_dtype), "compute dtype must be float32, float16 or bfloat16");

  CheckpointQuantizeReport report;
  io::CheckpointRewrite rewrite;
  rewrite.force = options.force;
  rewrite.on_progress = options.on_progress;
  rewrite.config = [&](nlohmann::json config) { return quantized_config(std::move(config), options); };
  rewrite.plan = [](const io::TensorInfo& tensor) {
    std::vector<std::pair<std::string, size_t>> outputs;
    if (!is_decoder_linear_weight(tensor.name, tensor.shape.size())) return decltype(outputs){{tensor.name, tensor.shape.size()}};
    for (const char* suffix : {"", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".quant_state.bitsandbytes__nf4"}) {
      outputs.emplace_back(tensor.name + suffix, 2);
    }
    return outputs;
  };
  rewrite.rewrite = [&](const io::TensorInfo& tensor, const torch::Tensor& source, const io::CheckpointLookup&,
                        const std::string& where) {
    std::vector<std::pair<std::string, torch::Tensor>> outputs;
    if (!is_decoder_linear_weight(tensor.name, tensor.shape.size())) {
      ++report.kept_tensors;
      outputs.emplace_back(tensor.name, is_float_type(source.scalar_type()) ? source.to(options.compute_dtype) : source);
      return outputs;
    }
    std::smatch match;
    std::regex_match(tensor.name, match, decoder_weight_pattern());
    SHARDLORA_CHECK(std::stoll(match[1]) < layers, where, ": layer ", match[1], " but config.json has num_hidden_layers = ", layers);
    SHARDLORA_CHECK(is_float_type(source.scalar_type()), where, ": cannot quantize dtype ", tensor.dtype);
    QuantState state;
    try {
      const torch::Tensor weight = options.device.type == kernels::DeviceType::CUDA
                                       ? source.to(torch::Device(torch::kCUDA, options.device.index))
                                       : source;
      state = quantize(weight, options.quant);
    } catch (const Error& error) {
      throw Error(where + ": " + error.what());
    }
    for (auto& [name, part] : to_bnb_tensors(state, tensor.name)) {
      report.quantized_bytes += part.nbytes();
      outputs.emplace_back(name, part);
    }
    report.quantized_params += state.numel();
    ++report.quantized_tensors;
    return outputs;
  };
  const io::CheckpointRewriteReport bytes = io::rewrite_checkpoint(checkpoint, out_dir, rewrite);
  report.bytes_in = bytes.bytes_in;
  report.bytes_out = bytes.bytes_out;
  return report;
}

}  // namespace shardlora::quant
