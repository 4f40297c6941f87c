// `shardlora quantize IN_DIR OUT_DIR`: an HF checkpoint to a bitsandbytes 4-bit checkpoint.
#include <chrono>
#include <cstdio>
#include <memory>

#include "commands.h"
#include "progress_bar.h"
#include "shardlora/kernels/quant_types.h"
#include "shardlora/nn/hf_loader.h"
#include "shardlora/quant/checkpoint_quantizer.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::launcher {
namespace {

struct QuantizeArgs {
  std::string in_dir, out_dir;
  std::string type = "nf4";
  int64_t blocksize = 64;
  bool double_quant = true;
  std::string compute_dtype = "bf16";
  std::string device = "auto";
  bool force = false;
};

std::string megabytes(uint64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f MB", static_cast<double>(bytes) / 1e6);
  return text;
}

int run_quantize(const QuantizeArgs& args) {
  quant::CheckpointQuantizeOptions options;
  kernels::parse_quant_type(args.type.c_str(), &options.quant.type);
  options.quant.blocksize = args.blocksize;
  options.quant.double_quant = args.double_quant;
  options.compute_dtype = *scalar_type_from_name(args.compute_dtype);
  const bool have_cuda = kernels::cuda_runtime_info().device_count > 0;
  SHARDLORA_CHECK(args.device != "cuda" || have_cuda, "--device cuda: no CUDA device is visible (",
                  kernels::cuda_runtime_info().status, ")");
  options.device = args.device == "cuda" || (args.device == "auto" && have_cuda) ? kernels::Device::cuda()
                                                                                  : kernels::Device::cpu();
  options.force = args.force;
  ProgressBar progress;
  options.on_progress = [&progress](uint64_t done, uint64_t total, const std::string& tensor) {
    progress.update(total ? static_cast<double>(done) / total : 1.0, megabytes(done) + " / " + megabytes(total) + "  " + tensor);
  };

  nn::check_hf_model(args.in_dir);  // nothing is written for a checkpoint no loader would take
  const auto start = std::chrono::steady_clock::now();
  const auto report = quant::quantize_checkpoint(args.in_dir, args.out_dir, options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  progress.finish(megabytes(report.bytes_in) + " read");
  std::printf("quantized %lld Linear weights (%s, blocksize %lld, %s) on %s; kept %lld tensors in %s\n",
              static_cast<long long>(report.quantized_tensors), args.type.c_str(), static_cast<long long>(args.blocksize),
              args.double_quant ? "double quantization" : "fp32 absmax",
              options.device.type == kernels::DeviceType::CUDA ? "cuda" : "cpu",
              static_cast<long long>(report.kept_tensors), torch_dtype_name(options.compute_dtype).c_str());
  std::printf("bytes in:        %s\n", megabytes(report.bytes_in).c_str());
  std::printf("bytes out:       %s (%.2fx)\n", megabytes(report.bytes_out).c_str(),
              report.bytes_in ? static_cast<double>(report.bytes_out) / report.bytes_in : 0.0);
  std::printf("bits/parameter:  %.3f over %lld quantized parameters\n", report.bits_per_param(),
              static_cast<long long>(report.quantized_params));
  std::printf("wrote %s in %.1f s\n", args.out_dir.c_str(), seconds);
  return 0;
}

}  // namespace

Subcommand add_quantize_command(CLI::App& root) {
  auto args = std::make_shared<QuantizeArgs>();
  CLI::App* app = root.add_subcommand("quantize", "Convert an HF checkpoint to a bitsandbytes 4-bit checkpoint");
  app->add_option("IN_DIR", args->in_dir, "Hugging Face model directory (config.json + safetensors)")->required();
  app->add_option("OUT_DIR", args->out_dir, "Output directory (must not exist unless --force)")->required();
  app->add_option("--type", args->type, "4-bit data type")->check(CLI::IsMember({"nf4", "fp4"}))->capture_default_str();
  app->add_option("--blocksize", args->blocksize, "Elements per absmax block")
      ->check(CLI::IsMember({32, 64, 128, 256, 512, 1024, 2048, 4096}))
      ->capture_default_str();
  app->add_flag("--double-quant,!--no-double-quant", args->double_quant,
                "Quantize the absmax values to 8 bits (bnb_4bit_use_double_quant; default on)");
  app->add_option("--compute-dtype", args->compute_dtype, "dtype of the tensors that stay unquantized")
      ->check(CLI::IsMember({"bf16", "fp16", "fp32", "bfloat16", "float16", "float32"}))
      ->capture_default_str();
  app->add_option("--device", args->device, "Where to quantize")->check(CLI::IsMember({"auto", "cpu", "cuda"}))->capture_default_str();
  app->add_flag("--force", args->force, "Replace OUT_DIR if it exists");
  return {app, [args] { return run_quantize(*args); }};
}

}  // namespace shardlora::launcher
