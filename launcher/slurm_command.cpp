// `shardlora slurm RECIPE --nodes N --gpus-per-node G [...] [--dry-run] [-- overrides]`: fills
// in cluster/templates/slurm.sbatch (compiled in) for a recipe, writes it into the run
// directory and submits it with sbatch, printing the job id. The recipe is loaded first, so a
// bad recipe fails here, not in the queue hours later.
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <regex>
#include <set>

#include "commands.h"
#include "shardlora/io/staging_directory.h"
#include "shardlora/kernels/check.h"
#include "shardlora/train/from_recipe.h"
#include "shardlora/train/recipe.h"
#include "shardlora/train/trainer.h"

namespace shardlora::embedded {
extern const char slurm_template[];
}

namespace shardlora::launcher {
namespace {

namespace fs = std::filesystem;

struct SlurmArgs {
  std::string recipe;
  std::vector<std::string> overrides;
  int nodes = 1;
  int gpus_per_node = -1;
  int tasks_per_node = 0;  // 0: one per GPU (CPU jobs: 1)
  std::string partition, account, time, qos, mem, job_name, launcher;
  int cpus_per_task = 0;
  bool dry_run = false;
  bool resume = false;
};

// One word for bash, whatever it holds.
std::string shell_quote(const std::string& word) {
  std::string quoted = "'";
  for (const char c : word) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

std::string executable_path() {
  std::error_code error;
  const fs::path self = fs::read_symlink("/proc/self/exe", error);
  SHARDLORA_CHECK(!error, "cannot find the shardlora executable (/proc/self/exe): ", error.message());
  return self.string();
}

// The template with every {{NAME}} replaced; a field the template has and `fields` lacks (or
// the reverse) is a bug in this file, reported as such.
std::string fill_template(const std::string& text, const std::map<std::string, std::string>& fields) {
  const std::regex placeholder(R"(\{\{([A-Z_]+)\}\})");
  std::string out;
  std::set<std::string> used;
  auto last = text.cbegin();
  for (std::sregex_iterator it(text.cbegin(), text.cend(), placeholder), end; it != end; ++it) {
    const std::string name = (*it)[1];
    const auto field = fields.find(name);
    SHARDLORA_CHECK(field != fields.end(), "the Slurm template has a field {{", name, "}} this shardlora does not fill");
    out.append(last, (*it)[0].first);
    out += field->second;
    used.insert(name);
    last = (*it)[0].second;
  }
  out.append(last, text.cend());
  for (const auto& [name, value] : fields) SHARDLORA_CHECK(used.count(name), "the Slurm template lacks the field {{", name, "}}");
  return out;
}

// `#SBATCH` lines for the resources asked for (only those given).
std::string resource_lines(const SlurmArgs& args) {
  std::string lines;
  const auto add = [&lines](const std::string& option, const std::string& value) {
    if (!value.empty()) lines += (lines.empty() ? "" : "\n") + std::string("#SBATCH --") + option + "=" + value;
  };
  // One GPU per task: each task sees its own as device 0 (training.device picks it).
  add("gpus-per-task", args.gpus_per_node > 0 ? "1" : "");
  add("cpus-per-task", args.cpus_per_task > 0 ? std::to_string(args.cpus_per_task) : "");
  add("mem", args.mem);
  add("time", args.time);
  add("partition", args.partition);
  add("account", args.account);
  add("qos", args.qos);
  return lines.empty() ? "# (no further resources requested)" : lines;
}

// sbatch --parsable's job id ("123" or "123;cluster").
std::string submit(const std::string& script) {
  const std::string command = "sbatch --parsable " + shell_quote(script) + " 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(command.c_str(), "r"), ::pclose);
  SHARDLORA_CHECK(pipe, "cannot run sbatch");
  std::string output;
  char buffer[512];
  while (std::fgets(buffer, sizeof buffer, pipe.get())) output += buffer;
  const int status = ::pclose(pipe.release());
  while (!output.empty() && (output.back() == '\n' || output.back() == '\r')) output.pop_back();
  if (status != 0) {
    const bool missing = WIFEXITED(status) && WEXITSTATUS(status) == 127;
    throw Error(missing ? "sbatch not found on PATH (is this a Slurm login node?); the script is " + script +
                              " (--dry-run writes it without submitting)"
                        : "sbatch refused " + script + ": " + output);
  }
  return output.substr(0, output.find(';'));
}

int run_slurm(const SlurmArgs& args) {
  const std::string launcher = !args.launcher.empty() ? args.launcher : args.gpus_per_node > 0 ? "srun" : "mpirun";
  const int tasks_per_node = args.tasks_per_node > 0 ? args.tasks_per_node : std::max(args.gpus_per_node, 1);
  SHARDLORA_CHECK(args.gpus_per_node == 0 || tasks_per_node == args.gpus_per_node, "--ntasks-per-node ", tasks_per_node,
                  " differs from --gpus-per-node ", args.gpus_per_node, ": a GPU job runs one task per GPU");

  // Loaded (and checked) here, as each task will load it.
  const train::Recipe recipe = train::Recipe::load(args.recipe, args.overrides);
  recipe.require_paths({"model.path", "data.train", "data.val"});
  // With a step count the schedule is checked now; counting the steps of epochs takes the
  // pass over the data each rank makes.
  if (recipe.get_int("training.max_steps") > 0) train::lr_schedule_from(recipe, recipe.get_int("training.max_steps")).validate();
  const fs::path run_dir = fs::absolute(recipe.get_string("output.dir")).lexically_normal();
  train::check_run_directory(run_dir.string(), args.resume ? train::StartMode::Resume : train::StartMode::Fresh);

  // #SBATCH lines take a path as one unquoted word.
  for (const auto& [what, dir] : {std::pair<std::string, std::string>{"output.dir", run_dir.string()},
                                  {"the working directory", fs::current_path().string()}}) {
    SHARDLORA_CHECK(std::regex_match(dir, std::regex(R"([A-Za-z0-9_./+,:@%=-]+)")), what, " '", dir,
                    "' holds a character #SBATCH lines cannot carry (space, quote, $, ...): choose a plain path");
  }
  std::string train_args = shell_quote(fs::absolute(args.recipe).lexically_normal().string());
  for (const std::string& override_text : args.overrides) train_args += " " + shell_quote(override_text);
  train_args += " --auto-resume";
  const std::string job_name = !args.job_name.empty() ? args.job_name : "shardlora-" + fs::path(args.recipe).stem().string();
  const std::string script = fill_template(embedded::slurm_template, {{"JOB_NAME", job_name},
                                                                      {"NODES", std::to_string(args.nodes)},
                                                                      {"TASKS_PER_NODE", std::to_string(tasks_per_node)},
                                                                      {"RESOURCES", resource_lines(args)},
                                                                      {"WORK_DIR", fs::current_path().string()},
                                                                      {"RUN_DIR", run_dir.string()},
                                                                      {"SHARDLORA", shell_quote(executable_path())},
                                                                      {"LAUNCHER", launcher},
                                                                      {"TRAIN_ARGS", train_args}});
  fs::create_directories(run_dir);
  const std::string path = (run_dir / "shardlora.sbatch").string();
  io::write_file_atomically(path, script);
  fs::permissions(path, fs::perms::owner_exec | fs::perms::group_exec, fs::perm_options::add);

  const int ranks = args.nodes * tasks_per_node;
  std::printf("%s: %d node%s x %d task%s (%d rank%s, %s, started by %s)\n", path.c_str(), args.nodes, args.nodes == 1 ? "" : "s",
              tasks_per_node, tasks_per_node == 1 ? "" : "s", ranks, ranks == 1 ? "" : "s",
              args.gpus_per_node > 0 ? "one GPU each" : "CPU", launcher.c_str());
  if (args.dry_run) {
    std::printf("not submitted (--dry-run): sbatch %s\n", path.c_str());
    return 0;
  }
  const std::string job_id = submit(path);
  std::printf("submitted job %s; log %s/slurm-%s.out\n", job_id.c_str(), run_dir.c_str(), job_id.c_str());
  return 0;
}

}  // namespace

Subcommand add_slurm_command(CLI::App& root) {
  auto args = std::make_shared<SlurmArgs>();
  CLI::App* app = root.add_subcommand("slurm", "Write (and submit) a Slurm batch job for a recipe");
  app->add_option("RECIPE", args->recipe, "Recipe YAML")->required()->check(CLI::ExistingFile);
  app->add_option("--nodes", args->nodes, "Nodes")->check(CLI::Range(1, 100000));
  app->add_option("--gpus-per-node", args->gpus_per_node, "GPUs per node, one task each (0: a CPU job)")
      ->required()
      ->check(CLI::Range(0, 1024));
  app->add_option("--ntasks-per-node", args->tasks_per_node, "Tasks per node (CPU jobs: one per CPU socket is a good choice; default 1)")
      ->check(CLI::Range(1, 100000));
  app->add_option("--partition", args->partition, "Slurm partition");
  app->add_option("--account", args->account, "Slurm account");
  app->add_option("--time", args->time, "Time limit (Slurm's format, e.g. 24:00:00)");
  app->add_option("--qos", args->qos, "Quality of service");
  app->add_option("--cpus-per-task", args->cpus_per_task, "CPUs per task")->check(CLI::Range(1, 100000));
  app->add_option("--mem", args->mem, "Memory per node (Slurm's format, e.g. 500G)");
  app->add_option("--job-name", args->job_name, "Job name (default: shardlora-RECIPE)");
  app->add_option("--launcher", args->launcher, "What starts the tasks (default: srun for GPU jobs, mpirun for CPU jobs)")
      ->check(CLI::IsMember({"srun", "mpirun"}));
  app->add_flag("--dry-run", args->dry_run, "Write the script into the run directory, do not submit it");
  app->add_flag("--resume", args->resume, "Continue the run in output.dir (without it, a run directory holding one is refused)");
  app->add_option("OVERRIDES", args->overrides, "section.key=value overrides, after --");
  return {app, [args] { return run_slurm(*args); }};
}

}  // namespace shardlora::launcher
