// `shardlora init-model OUT_DIR`: a random-initialised HF-format Llama, Qwen3, Phi-3 or Gemma 3 directory.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "commands.h"
#include "shardlora/io/staging_directory.h"
#include "shardlora/kernels/check.h"
#include "shardlora/nn/random_model.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::launcher {
namespace {

struct InitModelArgs {
  std::string out_dir;
  std::string preset = "tiny";
  int64_t vocab = 0;  // 0: the preset's
  uint64_t seed = 0;
  std::string dtype = "bf16";
  bool force = false;
};

int run_init_model(const InitModelArgs& args) {
  nn::RandomModelSpec spec = nn::model_preset(args.preset);
  if (args.vocab) spec.vocab = args.vocab;
  SHARDLORA_CHECK(spec.vocab >= nn::kByteVocab + 3, "--vocab ", spec.vocab, ": the byte-level tokenizer needs at least ",
                  nn::kByteVocab + 3, " tokens (256 bytes, <s>, </s>, <pad>)");
  spec.seed = args.seed;
  spec.dtype = *scalar_type_from_name(args.dtype);
  io::StagingDirectory staging(args.out_dir, args.force);
  int64_t parameters = 0;
  for (const auto& [name, tensor] : nn::write_random_hf_model(staging.dir(), spec)) parameters += tensor.numel();
  staging.commit();
  std::printf("wrote %s: %s preset, %.2fM parameters in %s, vocabulary %lld (byte-level tokenizer), seed %llu\n",
              args.out_dir.c_str(), args.preset.c_str(), static_cast<double>(parameters) / 1e6, args.dtype.c_str(),
              static_cast<long long>(spec.vocab), static_cast<unsigned long long>(spec.seed));
  return 0;
}

}  // namespace

Subcommand add_init_model_command(CLI::App& root) {
  auto args = std::make_shared<InitModelArgs>();
  CLI::App* app = root.add_subcommand("init-model", "Write a random-initialised HF-format Llama, Qwen3, Phi-3 or Gemma 3 model directory");
  app->add_option("OUT_DIR", args->out_dir, "Directory to create")->required();
  app->add_option("--preset", args->preset,
                  "tiny (~0.1M parameters), demo (~0.9M), small (~104M), qwen3-tiny (~0.1M, Qwen3's layout), qwen3-0.6b "
                  "(Qwen3-0.6B's shape, 0.6B), phi3-tiny (~0.1M, Phi-3's fused projections) or gemma3-tiny (~0.3M, Gemma 3's layers)")
      ->check(CLI::IsMember(nn::model_preset_names()))
      ->capture_default_str();
  app->add_option("--vocab", args->vocab, "Vocabulary size (at least 259; default: the preset's)");
  app->add_option("--seed", args->seed, "Random seed")->capture_default_str();
  app->add_option("--dtype", args->dtype, "Weight dtype")->check(CLI::IsMember({"bf16", "fp16", "fp32"}))->capture_default_str();
  app->add_flag("--force", args->force, "Replace OUT_DIR if it exists");
  return {app, [args] { return run_init_model(*args); }};
}

}  // namespace shardlora::launcher
