// `shardlora estimate RECIPE [overrides] [--world-size N] [--gpu-mem 24GiB] [--cpu]`: the
// per-rank memory table of train/memory_estimate.h for full fine-tuning, LoRA and QLoRA,
// with whether each fits. Needs only the model's config.json, not its weights.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>

#include "commands.h"
#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/kernels/check.h"
#include "shardlora/train/memory_estimate.h"

namespace shardlora::launcher {
namespace {

struct EstimateArgs {
  std::string recipe;
  std::vector<std::string> overrides;
  int64_t world_size = 1;
  std::string gpu_mem = "80GiB";
  bool cpu = false;
  bool json = false;
};

// "24GiB", "80GB", "512MiB", "24G" (binary units for G/M/K alone) -> bytes.
int64_t parse_size(const std::string& text) {
  size_t used = 0;
  double value = -1;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
  }
  std::string unit = text.substr(used);
  const std::pair<const char*, double> units[] = {{"", 1.0},         {"B", 1.0},          {"K", 1024.0}, {"KiB", 1024.0},
                                                  {"KB", 1e3},       {"M", 1 << 20},      {"MiB", 1 << 20}, {"MB", 1e6},
                                                  {"G", 1 << 30},    {"GiB", 1 << 30},    {"GB", 1e9},   {"T", 1099511627776.0},
                                                  {"TiB", 1099511627776.0}, {"TB", 1e12}};
  for (const auto& [name, scale] : units) {
    if (unit == name && value > 0) return static_cast<int64_t>(value * scale);
  }
  throw Error("--gpu-mem: '" + text + "' is not a size such as 24GiB, 80GB or 512MiB");
}

std::string gib(int64_t bytes) {
  char text[32];
  if (bytes < (1LL << 30)) {
    std::snprintf(text, sizeof text, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  } else {
    std::snprintf(text, sizeof text, "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
  }
  return text;
}

std::string parameter_text(int64_t parameters) {
  char text[32];
  const double count = static_cast<double>(parameters);
  std::snprintf(text, sizeof text, count >= 1e9 ? "%.2fB" : "%.2fM", count >= 1e9 ? count / 1e9 : count / 1e6);
  return text;
}

// Rows of `device` memory (or host), in order of first appearance, one column per method.
void print_section(const std::vector<train::MemoryEstimate>& estimates, bool device, const char* title) {
  std::vector<std::string> names;
  for (const auto& e : estimates) {
    for (const auto& row : e.rows) {
      if ((device ? row.device_bytes : row.host_bytes) != 0 && std::find(names.begin(), names.end(), row.name) == names.end()) {
        names.push_back(row.name);
      }
    }
  }
  std::printf("%s\n", title);
  for (const auto& name : names) {
    std::printf("  %-40s", name.c_str());
    for (const auto& e : estimates) {
      const int64_t bytes = e.row(name, device);
      std::printf(" %14s", bytes ? gib(bytes).c_str() : "-");
    }
    std::printf("\n");
  }
  std::printf("  %-40s", "total");
  for (const auto& e : estimates) std::printf(" %14s", gib(device ? e.device_total() : e.host_total()).c_str());
  std::printf("\n");
}

int run_estimate(const EstimateArgs& args) {
  const train::Recipe recipe = train::Recipe::load(args.recipe, args.overrides);
  recipe.require_paths({"model.path"});
  const std::string config_path = recipe.get_string("model.path") + "/" + io::kConfigFile;
  const nn::LlamaConfig config = nn::parse_llama_config(io::read_json_file(config_path), config_path);
  const int64_t gpu_bytes = parse_size(args.gpu_mem);
  const auto estimates = train::estimate_memory(recipe, config, {args.world_size, !args.cpu});
  const int64_t parameters = train::parameter_count(config);

  if (args.json) {
    nlohmann::json out = {{"parameters", parameters}, {"world_size", args.world_size}, {"device", args.cpu ? "cpu" : "gpu"},
                          {"gpu_mem_bytes", gpu_bytes}, {"methods", nlohmann::json::object()}};
    for (const auto& e : estimates) {
      nlohmann::json rows = nlohmann::json::array();
      for (const auto& row : e.rows) rows.push_back({{"name", row.name}, {"device_bytes", row.device_bytes}, {"host_bytes", row.host_bytes}});
      out["methods"][train::method_name(e.method)] = {{"rows", rows},
                                                      {"device_total_bytes", e.device_total()},
                                                      {"host_total_bytes", e.host_total()},
                                                      {"fits", args.cpu || e.device_total() <= gpu_bytes}};
    }
    std::cout << out.dump() << "\n";
    return 0;
  }
  std::printf("%s: %s, %lld layers, hidden %lld, %s parameters; per rank of %lld on %s; micro-batch %lld x %lld tokens, "
              "activation checkpointing %s\n\n",
              args.recipe.c_str(), config.model_type.c_str(), static_cast<long long>(config.num_hidden_layers),
              static_cast<long long>(config.hidden_size), parameter_text(parameters).c_str(), static_cast<long long>(args.world_size),
              args.cpu ? "CPU" : "GPU", static_cast<long long>(recipe.get_int("training.micro_batch_size")),
              static_cast<long long>(recipe.get_int("data.max_seq_len")), recipe.get_bool("training.activation_checkpointing") ? "on" : "off");
  std::printf("  %-40s %14s %14s %14s\n", "", "full (bf16)", "LoRA (16-bit)", "QLoRA");
  if (!args.cpu) {
    print_section(estimates, true, "GPU memory");
    std::printf("  %-40s", ("fits in " + args.gpu_mem).c_str());
    for (const auto& e : estimates) std::printf(" %14s", e.device_total() <= gpu_bytes ? "yes" : "no");
    std::printf("\n");
  }
  print_section(estimates, false, "host memory");
  return 0;
}

}  // namespace

Subcommand add_estimate_command(CLI::App& root) {
  auto args = std::make_shared<EstimateArgs>();
  CLI::App* app = root.add_subcommand("estimate", "Per-rank memory of a recipe: full fine-tuning, LoRA and QLoRA side by side");
  app->add_option("RECIPE", args->recipe, "Recipe YAML")->required()->check(CLI::ExistingFile);
  app->add_option("OVERRIDES", args->overrides, "section.key=value overrides");
  app->add_option("--world-size", args->world_size, "Ranks the base is sharded or replicated over")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app->add_option("--gpu-mem", args->gpu_mem, "Memory of one GPU, e.g. 24GiB or 80GB")->capture_default_str();
  app->add_flag("--cpu", args->cpu, "Training on the CPU: every byte is host memory");
  app->add_flag("--json", args->json, "Print the table as JSON (bytes)");
  return {app, [args] { return run_estimate(*args); }};
}

}  // namespace shardlora::launcher
