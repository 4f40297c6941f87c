#include "shardlora/quant/checkpoint_quantizer.h"

#include <filesystem>
#include <memory>
#include <fstream>
#include <regex>

#include <torch/torch.h>

#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/io/safetensors.h"
#include "shardlora/io/staging_directory.h"
#include "shardlora/kernels/check.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::quant {
namespace {

namespace fs = std::filesystem;
using io::SafetensorsFile;
using io::SafetensorsWriter;
using io::TensorInfo;

const std::regex& decoder_weight_pattern() {
  static const std::regex pattern(R"(^model\.layers\.(\d+)\..+\.weight$)");
  return pattern;
}

torch::Tensor tensor_view(const SafetensorsFile& file, const TensorInfo& info) {
  const auto type = scalar_type_from_safetensors(info.dtype);
  SHARDLORA_CHECK(type, file.path(), ": tensor '", info.name, "': dtype ", info.dtype, " is not supported");
  return torch::from_blob(const_cast<uint8_t*>(file.data(info)), info.shape, torch::TensorOptions().dtype(*type));
}

void write_tensor(SafetensorsWriter& out, const std::string& name, const torch::Tensor& tensor) {
  const torch::Tensor host = tensor.cpu().contiguous();
  out.add(name, safetensors_dtype_name(host.scalar_type()), host.sizes().vec(), host.data_ptr(), host.nbytes());
}

void write_config(const io::HfCheckpoint& checkpoint, const CheckpointQuantizeOptions& options, const std::string& path) {
  nlohmann::json config = checkpoint.config;
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
  std::ofstream(path) << config.dump(2) << "\n";
}

}  // namespace

bool is_decoder_linear_weight(const std::string& name, size_t rank) {
  return rank == 2 && std::regex_match(name, decoder_weight_pattern());
}

CheckpointQuantizeReport quantize_checkpoint(const std::string& in_dir, const std::string& out_dir,
                                             const CheckpointQuantizeOptions& options) {
  const io::HfCheckpoint checkpoint = io::open_hf_checkpoint(in_dir);
  config_string(checkpoint, "model_type");
  const int64_t layers = io::config_positive_int(checkpoint, "num_hidden_layers");
  SHARDLORA_CHECK(!checkpoint.config.contains("quantization_config"), checkpoint.path(io::kConfigFile),
                  ": already has a quantization_config (the checkpoint is quantized)");
  SHARDLORA_CHECK(is_float_type(options.compute_dtype), "compute dtype must be float32, float16 or bfloat16");

  CheckpointQuantizeReport report;
  // Each shard is mapped and its header validated once, up front: a corrupt last shard fails
  // before any output is written, and the tensor bytes give the progress total.
  std::vector<std::unique_ptr<SafetensorsFile>> inputs;
  uint64_t total = 0, done = 0;
  for (const auto& shard : checkpoint.shards) {
    inputs.push_back(std::make_unique<SafetensorsFile>(checkpoint.path(shard)));
    report.bytes_in += fs::file_size(checkpoint.path(shard));
    total += inputs.back()->header().data_bytes;
  }

  io::StagingDirectory staging(out_dir, options.force);
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total_tensor_bytes = 0;
  for (size_t shard_index = 0; shard_index < checkpoint.shards.size(); ++shard_index) {
    const std::string& shard = checkpoint.shards[shard_index];
    const SafetensorsFile& in = *inputs[shard_index];
    std::vector<std::pair<std::string, size_t>> outputs;
    for (const auto& tensor : in.header().tensors) {
      if (is_decoder_linear_weight(tensor.name, tensor.shape.size())) {
        for (const char* suffix : {"", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                   ".quant_state.bitsandbytes__nf4"}) {
          outputs.emplace_back(tensor.name + suffix, 2);
        }
      } else {
        outputs.emplace_back(tensor.name, tensor.shape.size());
      }
    }
    SafetensorsWriter out(staging.path(shard), SafetensorsWriter::header_bound(outputs));
    for (const auto& tensor : in.header().tensors) {
      const std::string where = in.path() + ": tensor '" + tensor.name + "'";
      if (checkpoint.indexed) {
        const auto listed = checkpoint.weight_map.find(tensor.name);
        SHARDLORA_CHECK(listed != checkpoint.weight_map.end() && listed->second == shard, where, ": not listed for this shard in ",
                        io::kShardIndex);
      }
      const torch::Tensor source = tensor_view(in, tensor);
      if (is_decoder_linear_weight(tensor.name, tensor.shape.size())) {
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
        for (const auto& [name, part] : to_bnb_tensors(state, tensor.name)) {
          write_tensor(out, name, part);
          report.quantized_bytes += part.nbytes();
          weight_map[name] = shard;
        }
        report.quantized_params += state.numel();
        ++report.quantized_tensors;
      } else {
        write_tensor(out, tensor.name, is_float_type(source.scalar_type()) ? source.to(options.compute_dtype) : source);
        weight_map[tensor.name] = shard;
        ++report.kept_tensors;
      }
      in.release(tensor);
      done += tensor.bytes();
      if (options.on_progress) options.on_progress(done, total, tensor.name);
    }
    total_tensor_bytes += out.data_bytes();
    out.finish();
    report.bytes_out += fs::file_size(staging.path(shard));
  }
  if (checkpoint.indexed) {
    const nlohmann::json index = {{"metadata", {{"total_size", total_tensor_bytes}}}, {"weight_map", weight_map}};
    std::ofstream(staging.path(io::kShardIndex)) << index.dump(2) << "\n";
  }
  write_config(checkpoint, options, staging.path(io::kConfigFile));
  for (const auto& entry : fs::directory_iterator(in_dir)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name == io::kConfigFile || name == io::kShardIndex ||
        entry.path().extension() == ".safetensors") {
      continue;
    }
    fs::copy_file(entry.path(), staging.path(name));
  }
  staging.commit();
  return report;
}

}  // namespace shardlora::quant
