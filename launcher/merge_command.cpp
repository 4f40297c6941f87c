// `shardlora merge BASE ADAPTER OUT`: the adapter folded into the base, as a float HF model.
#include <cstdio>
#include <memory>

#include "commands.h"
#include "shardlora/nn/merge.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::launcher {
namespace {

struct MergeArgs {
  std::string base_dir, adapter_dir, out_dir;
  std::string dtype = "bf16";
  bool force = false;
};

int run_merge(const MergeArgs& args) {
  nn::MergeOptions options;
  options.dtype = *scalar_type_from_name(args.dtype);
  options.force = args.force;
  const nn::MergeReport report = nn::merge_adapter(args.base_dir, args.adapter_dir, args.out_dir, options);
  std::printf("wrote %s: %lld adapted weights merged, %s, %.1f MB\n", args.out_dir.c_str(),
              static_cast<long long>(report.merged_modules), args.dtype.c_str(), static_cast<double>(report.bytes_out) / 1e6);
  return 0;
}

}  // namespace

Subcommand add_merge_command(CLI::App& root) {
  auto args = std::make_shared<MergeArgs>();
  CLI::App* app = root.add_subcommand("merge", "Merge a LoRA adapter into its base model (a float HF checkpoint out)");
  app->add_option("BASE", args->base_dir, "Base model directory (float or bnb 4-bit)")->required()->check(CLI::ExistingDirectory);
  app->add_option("ADAPTER", args->adapter_dir, "PEFT adapter directory")->required()->check(CLI::ExistingDirectory);
  app->add_option("OUT", args->out_dir, "Directory to create")->required();
  app->add_option("--dtype", args->dtype, "Output dtype")->check(CLI::IsMember({"bf16", "fp16", "fp32"}))->capture_default_str();
  app->add_flag("--force", args->force, "Replace OUT if it exists");
  return {app, [args] { return run_merge(*args); }};
}

}  // namespace shardlora::launcher
