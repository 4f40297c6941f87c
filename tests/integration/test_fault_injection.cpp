// Nothing lost, nothing half-written: `shardlora train` under injected faults (the LD_PRELOAD
// shim in tests/support/fault_injection.c). A full disk at any one file of a checkpoint or
// of the final adapter fails the run with the file named, the checkpoints before it intact;
// a SIGKILL before any file-system call of writing the last checkpoint, pruning the one
// before it and publishing the adapter leaves only complete checkpoints, and a resume then
// ends on the uninterrupted run's adapter, bit for bit, with keep_last holding. A second
// train, resume or overwrite of a directory a live run holds is refused, naming it. A full
// disk fails init-model and quantize too, naming the file, with no output left.
#include <gtest/gtest.h>
#include <unistd.h>

#include <climits>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "shardlora/io/run_lock.h"
#include "shardlora/nn/random_model.h"
#include "shardlora/train/trainer.h"
#include "shardlora_paths.h"
#include "subprocess.h"
#include "temp_dir.h"

using namespace shardlora;
using namespace shardlora::testing;
namespace fs = std::filesystem;

namespace {

const char* const kCheckpointFiles[] = {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "optimizer.safetensors",
                                        "rng.safetensors", "trainer_state.json"};

class FaultInjection : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    nn::write_random_hf_model(path("model"), {});
    std::ofstream data(path("train.jsonl"));
    for (int i = 0; i < 16; ++i) data << R"({"text": "the cat sat on mat )" << i % 5 << R"("})" << "\n";
    data.close();
    std::ofstream(path("recipe.yaml")) << "model:\n  path: " << path("model") << "\n  dtype: fp32\n"
                                       << "data:\n  train: " << path("train.jsonl") << "\n  format: text\n  max_seq_len: 32\n"
                                       << "lora:\n  r: 4\n  dropout: 0.1\n"
                                       << "training:\n  max_steps: 4\n  save_every: 2\n  keep_last: 1\n  log_every: 1\n"
                                       << "output:\n  dir: " << path("run") << "\n";
  }

  // `shardlora train recipe.yaml ARGS` with the fault variables set for the child alone.
  ProcessResult train(const std::vector<std::string>& args, const std::vector<std::pair<std::string, std::string>>& faults = {}) {
    std::vector<std::string> argv = {shardlora_binary(), "train", path("recipe.yaml")};
    argv.insert(argv.end(), args.begin(), args.end());
    if (!faults.empty()) ::setenv("LD_PRELOAD", SHARDLORA_FAULT_SHIM, 1);
    for (const auto& [name, value] : faults) ::setenv(name.c_str(), value.c_str(), 1);
    ProcessResult result = run_process(argv, 300.0);
    ::unsetenv("LD_PRELOAD");
    for (const auto& [name, value] : faults) ::unsetenv(name.c_str());
    return result;
  }

  std::string final_adapter() { return read_file(path("run/adapter/adapter_model.safetensors")); }

  // Every checkpoint the trainer would see is whole: all its files, a state that parses.
  void expect_checkpoints_complete(const std::string& context) {
    for (const auto& dir : train::checkpoints(path("run"))) {
      for (const char* file : kCheckpointFiles) {
        EXPECT_TRUE(fs::is_regular_file(dir / file)) << context << ": " << dir << " lacks " << file;
      }
      const std::string state = read_file((dir / "trainer_state.json").string());
      EXPECT_TRUE(nlohmann::json::accept(state)) << context << ": " << dir << "/trainer_state.json is '" << state << "'";
    }
  }

  void expect_no_leftovers(const std::string& context) { expect_no_leftovers_in(path("run"), context); }

  void expect_no_leftovers_in(const std::string& dir, const std::string& context = "") {
    for (const auto& entry : fs::directory_iterator(dir)) {
      const std::string name = entry.path().filename().string();
      EXPECT_EQ(name.find(".partial-"), std::string::npos) << context << ": " << name << " left behind";
      EXPECT_EQ(name.find(".old-"), std::string::npos) << context << ": " << name << " left behind";
    }
  }

  // The adapter of a 4-step run without faults (the run directory is then removed).
  std::string reference_adapter() {
    const auto straight = train({});
    EXPECT_EQ(straight.exit_code, 0) << straight.err;
    std::string adapter = final_adapter();
    EXPECT_FALSE(adapter.empty());
    fs::remove_all(path("run"));
    return adapter;
  }
};

}  // namespace

TEST_F(FaultInjection, AFullDiskAtAnyFileOfTheLastCheckpointFailsTheRunAndThePreviousOneResumes) {
  const auto no_metrics = train({}, {{"SHARDLORA_FAULT_ENOSPC", "*/run/metrics.jsonl"}});
  EXPECT_EQ(no_metrics.exit_code, 1);
  EXPECT_NE(no_metrics.err.find("metrics.jsonl: cannot write: No space left on device"), std::string::npos) << no_metrics.err;
  fs::remove_all(path("run"));
  const std::string reference = reference_adapter();
  std::vector<std::string> targets;
  for (const char* file : kCheckpointFiles) targets.push_back(std::string("checkpoint-000004.partial-*/") + file + "*");
  targets.push_back("adapter.partial-*/adapter_model.safetensors*");
  targets.push_back("adapter.partial-*/adapter_config.json*");
  for (const std::string& target : targets) {
    SCOPED_TRACE(target);
    fs::remove_all(path("run"));
    const auto full = train({}, {{"SHARDLORA_FAULT_ENOSPC", "*/run/" + target}});
    EXPECT_EQ(full.exit_code, 1) << full.out << full.err;
    EXPECT_NE(full.err.find("No space left on device"), std::string::npos) << full.err;
    const std::string file = target.substr(target.find('/') + 1, target.rfind('*') - target.find('/') - 1);
    EXPECT_NE(full.err.find(fs::path(file).filename().string()), std::string::npos) << "the error names the file: " << full.err;
    EXPECT_EQ(full.out.find("trained 4/4"), std::string::npos) << full.out;
    expect_checkpoints_complete(target);
    EXPECT_FALSE(fs::exists(path("run/adapter")) && target.rfind("adapter.", 0) == 0) << "no adapter/ from a failed write";
    const auto resumed = train({"--resume"});
    ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
    EXPECT_EQ(final_adapter(), reference) << "resumed from the checkpoint before the failure";
    EXPECT_EQ(train::checkpoints(path("run")).size(), 1u) << "keep_last: 1";
    expect_no_leftovers(target);
  }
}

TEST_F(FaultInjection, ASigkillAtAnyPointOfTheLastCheckpointPruningAndAdapterLeavesAResumableRun) {
  const std::string reference = reference_adapter();
  int killed = 0;
  for (int point = 1; point < 400; ++point) {
    const std::string context = "kill point " + std::to_string(point);
    SCOPED_TRACE(context);
    fs::remove_all(path("run"));
    const auto cut = train({}, {{"SHARDLORA_FAULT_ARM", "*/run/checkpoint-000004.partial-*"},
                                {"SHARDLORA_FAULT_SCOPE", path("run") + "*"},
                                {"SHARDLORA_FAULT_KILL_AT", std::to_string(point)}});
    if (cut.exit_code == 0) break;  // past the last call: the run completed
    ASSERT_EQ(cut.exit_code, 128 + SIGKILL) << cut.err;
    ASSERT_NE(cut.err.find("fault-injection: SIGKILL before"), std::string::npos) << cut.err;
    ++killed;
    expect_checkpoints_complete(context + " (" + cut.err.substr(cut.err.rfind("before ")) + ")");
    ASSERT_FALSE(train::checkpoints(path("run")).empty()) << "checkpoint-000002 is pruned only after 000004 is durable";
    const auto resumed = train({"--resume"});
    ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
    EXPECT_EQ(final_adapter(), reference);
    EXPECT_EQ(train::checkpoints(path("run")).size(), 1u) << "keep_last: 1";
    expect_no_leftovers(context);
  }
  std::printf("%d kill points cut, each resumed\n", killed);
  // Every file's create, writes, sync and rename, the directory syncs, the pruning.
  EXPECT_GT(killed, 30) << "the run never got past the kill points";
}

TEST_F(FaultInjection, ALockedRunDirectoryRefusesASecondTrainResumeAndOverwrite) {
  ASSERT_EQ(train({"training.max_steps=2"}).exit_code, 0);
  const io::RunDirectoryLock held(path("run"));  // a live run: this test process
  char host[HOST_NAME_MAX + 1] = {};
  ::gethostname(host, sizeof host - 1);
  const std::string holder = std::string("host ") + host + " pid " + std::to_string(::getpid());
  for (const std::vector<std::string>& args : {std::vector<std::string>{}, {"--resume"}, {"--overwrite"}}) {
    const auto second = train(args);
    EXPECT_EQ(second.exit_code, 1) << second.out;
    EXPECT_NE(second.err.find("is in use by another run (" + holder), std::string::npos) << second.err;
  }
  EXPECT_TRUE(fs::exists(path("run/checkpoint-000002/trainer_state.json"))) << "the held run is untouched";
}

TEST_F(FaultInjection, AFinishedRunCountsAsARunAndALockIsFreedWhenItsHolderDies) {
  ASSERT_EQ(train({"training.max_steps=2"}).exit_code, 0);
  for (const auto& checkpoint : train::checkpoints(path("run"))) fs::remove_all(checkpoint);
  const auto fresh = train({"training.max_steps=2"});
  EXPECT_EQ(fresh.exit_code, 1);
  EXPECT_NE(fresh.err.find("holds a run (its final adapter/)"), std::string::npos) << fresh.err;
  // A run killed while it held the lock leaves the lock file, but no lock.
  const auto killed = train({"--overwrite"}, {{"SHARDLORA_FAULT_ARM", "*/run/recipe.yaml*"}, {"SHARDLORA_FAULT_KILL_AT", "1"}});
  ASSERT_EQ(killed.exit_code, 128 + SIGKILL) << killed.err;
  const auto after = train({"--overwrite", "training.max_steps=2"});
  EXPECT_EQ(after.exit_code, 0) << after.err;
}

TEST_F(FaultInjection, AFullDiskFailsInitModelAndQuantizeNamingTheFileAndLeavesNoOutput) {
  const auto run_full = [&](const std::vector<std::string>& args, const std::string& full) {
    ::setenv("LD_PRELOAD", SHARDLORA_FAULT_SHIM, 1);
    ::setenv("SHARDLORA_FAULT_ENOSPC", full.c_str(), 1);
    std::vector<std::string> argv = {shardlora_binary()};
    argv.insert(argv.end(), args.begin(), args.end());
    ProcessResult result = run_process(argv, 120.0);
    ::unsetenv("LD_PRELOAD");
    ::unsetenv("SHARDLORA_FAULT_ENOSPC");
    return result;
  };
  for (const char* file : {"config.json", "tokenizer.json", "model.safetensors"}) {
    const auto made = run_full({"init-model", path("made")}, "*/made.partial-*/" + std::string(file) + "*");
    EXPECT_EQ(made.exit_code, 1) << file << ": " << made.out;
    EXPECT_NE(made.err.find(std::string(file) + ".partial-"), std::string::npos) << made.err;
    EXPECT_NE(made.err.find("No space left on device"), std::string::npos) << made.err;
    EXPECT_FALSE(fs::exists(path("made"))) << file;
    const auto quantized = run_full({"quantize", path("model"), path("q")}, "*/q.partial-*/" + std::string(file) + "*");
    EXPECT_EQ(quantized.exit_code, 1) << file << ": " << quantized.out;
    EXPECT_NE(quantized.err.find("No space left on device"), std::string::npos) << quantized.err;
    EXPECT_FALSE(fs::exists(path("q"))) << file;
  }
  expect_no_leftovers_in(root_.string());
}

TEST_F(FaultInjection, TwoTrainsIntoOneDirectoryTheSecondIsRefusedNamingTheFirst) {
  // The first trains "forever"; once it holds the lock (its pid in the lock file), a second
  // train into the same output.dir is started, then the first is stopped.
  const std::string script = R"sh(
"$BIN" train "$RECIPE" training.max_steps=100000 training.save_every=0 > /dev/null 2>&1 & first=$!
for i in $(seq 600); do grep -q "pid $first" "$RUN/.shardlora-lock" 2>/dev/null && break; sleep 0.05; done
"$BIN" train "$RECIPE" --overwrite; status=$?
kill -TERM $first; wait $first
echo "first pid $first, second status $status"
)sh";
  const auto result = run_process({"env", "BIN=" + shardlora_binary(), "RECIPE=" + path("recipe.yaml"), "RUN=" + path("run"), "bash", "-c", script});
  ASSERT_NE(result.out.find("second status 1"), std::string::npos) << result.out << result.err;
  const std::string first_pid = result.out.substr(result.out.find("first pid ") + 10, result.out.find(',') - result.out.find("first pid ") - 10);
  EXPECT_NE(result.err.find("is in use by another run (host "), std::string::npos) << result.err;
  EXPECT_NE(result.err.find(" pid " + first_pid + ";"), std::string::npos) << result.err;
  EXPECT_FALSE(train::checkpoints(path("run")).empty()) << "the first run checkpointed on SIGTERM, undisturbed by the second";
}
