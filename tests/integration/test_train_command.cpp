// `shardlora train`: a recipe with overrides trains and writes its run directory;
// --resume continues to the same end; --help-recipe lists the keys; a bad recipe names the
// key and line and exits 1; SIGTERM checkpoints and exits 0.
#include <gtest/gtest.h>
#include <signal.h>
#include <sched.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "shardlora/nn/random_model.h"
#include "shardlora_paths.h"
#include "subprocess.h"
#include "temp_dir.h"

using namespace shardlora;
using namespace shardlora::testing;
namespace fs = std::filesystem;

namespace {

class TrainCommand : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    nn::write_random_hf_model(path("model"), {});
    std::ofstream data(path("chat.jsonl"));
    for (int i = 0; i < 16; ++i) {
      data << R"({"messages": [{"role": "user", "content": "add )" << i << R"( and 1"}, {"role": "assistant", "content": ")"
           << i + 1 << R"("}]})" << "\n";
    }
    std::ofstream(path("recipe.yaml")) << "model:\n  path: " << path("model") << "\n  dtype: fp32\n"
                                       << "data:\n  train: " << path("chat.jsonl") << "\n  max_seq_len: 128\n"
                                       << "lora:\n  r: 4\n"
                                       << "training:\n  max_steps: 4\n  save_every: 2\n  log_every: 1\n"
                                       << "output:\n  dir: " << path("run") << "\n";
  }

  ProcessResult train(std::vector<std::string> args) {
    args.insert(args.begin(), {shardlora_binary(), "train"});
    return run_process(args, 300.0);
  }

  size_t metric_lines(const std::string& run) {
    std::ifstream in(path(run + "/metrics.jsonl"));
    size_t lines = 0;
    for (std::string line; std::getline(in, line);) ++lines;
    return lines;
  }
};

}  // namespace

TEST_F(TrainCommand, TrainsResumesAndExplainsItsRecipe) {
  const auto result = train({path("recipe.yaml"), "training.max_steps=2"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("trained 2/2 steps"), std::string::npos) << result.out;
  EXPECT_EQ(metric_lines("run"), 2u);
  EXPECT_TRUE(fs::exists(path("run/checkpoint-000002/adapter/adapter_model.safetensors")));
  EXPECT_TRUE(fs::exists(path("run/recipe.yaml")));
  // Resuming with the recipe's own max_steps (4) continues from step 2.
  const auto resumed = train({path("recipe.yaml"), "--resume"});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("trained 4/4 steps"), std::string::npos) << resumed.out;
  EXPECT_EQ(metric_lines("run"), 4u);

  const auto help = train({"--help-recipe"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("optimizer.gpu_pages: integer"), std::string::npos) << help.out;

  std::ofstream(path("bad.yaml")) << "model:\n  path: x\ndata:\n  train: y\nlora:\n  r: -1\n";
  const auto bad = train({path("bad.yaml")});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("bad.yaml:6: key 'lora.r' must be an integer in [1, 4096], found '-1'"), std::string::npos) << bad.err;
  const auto unknown = train({path("recipe.yaml"), "lora.rank=2"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.err.find("unknown key 'lora.rank'"), std::string::npos) << unknown.err;
}

TEST_F(TrainCommand, ComputesWithTheThreadsItIsGivenOrTold) {
  // Alone on this machine a run takes every CPU of its affinity mask (the topology line
  // says how many); training.threads overrides.
  cpu_set_t mask;
  ASSERT_EQ(sched_getaffinity(0, sizeof mask, &mask), 0);
  const int cpus = CPU_COUNT(&mask);
  const auto run = [&](const std::string& name, std::vector<std::string> extra) {
    std::vector<std::string> args = {"/usr/bin/env", "-u", "OMP_NUM_THREADS", "-u", "SLURM_CPUS_PER_TASK", shardlora_binary(), "train",
                                     path("recipe.yaml"), "training.max_steps=1", "output.dir=" + path(name)};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_process(args, 300.0);
  };
  const auto automatic = run("auto", {});
  ASSERT_EQ(automatic.exit_code, 0) << automatic.err;
  const std::string expected = "cpu (" + std::to_string(cpus) + (cpus == 1 ? " thread)" : " threads)");
  EXPECT_NE(automatic.out.find(expected), std::string::npos) << automatic.out;
  const auto told = run("told", {"training.threads=1"});
  ASSERT_EQ(told.exit_code, 0) << told.err;
  EXPECT_NE(told.out.find("cpu (1 thread)"), std::string::npos) << told.out;
}

TEST_F(TrainCommand, SigtermCheckpointsAndExitsZero) {
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const std::string binary = shardlora_binary(), recipe = path("recipe.yaml");
    const std::string steps = "training.max_steps=100000", out = "output.dir=" + path("long");
    const int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, 1);
    execl(binary.c_str(), binary.c_str(), "train", recipe.c_str(), steps.c_str(), out.c_str(), "training.save_every=0",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait until training has logged a step, then ask it to stop.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (metric_lines("long") < 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_GE(metric_lines("long"), 1u) << "training never logged a step";
  ::kill(child, SIGTERM);
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by the signal instead of stopping";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  bool checkpoint = false;
  for (const auto& entry : fs::directory_iterator(path("long"))) {
    checkpoint = checkpoint || entry.path().filename().string().rfind("checkpoint-", 0) == 0;
  }
  EXPECT_TRUE(checkpoint) << "no checkpoint written on SIGTERM";
}
