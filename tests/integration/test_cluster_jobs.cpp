// Cluster jobs end to end: `shardlora slurm` writes a batch script that checks out (dry run,
// refusals); a real one-node Slurm (tests/integration/slurm/local-slurm: munge, slurmctld,
// slurmd on this machine) runs the demo recipe on 2 tasks, through mpirun and through srun,
// and a job that is requeued or warned of its time limit checkpoints, is requeued and
// completes from its checkpoint; cluster/templates/mpirun-hostfile.sh runs the demo on the
// 2 ranks of a hostfile naming localhost twice.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "shardlora_paths.h"
#include "subprocess.h"
#include "temp_dir.h"

using namespace shardlora::testing;
namespace fs = std::filesystem;

namespace {

const std::string kSource = SHARDLORA_SOURCE_DIR;

// The demo recipe on its model and data, with a short schedule and frequent checkpoints.
class ClusterJob : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    const auto made = run_process({shardlora_binary(), "init-model", "--preset", "demo", path("model")}, 120.0);
    ASSERT_EQ(made.exit_code, 0) << made.err;
  }

  std::vector<std::string> overrides(const std::string& run, int steps) const {
    return {"model.path=" + path("model"), "data.train=" + kSource + "/recipes/demo/train.jsonl",
            "data.val=" + kSource + "/recipes/demo/eval.jsonl", "output.dir=" + path(run),
            "training.max_steps=" + std::to_string(steps), "schedule.warmup_steps=5", "training.save_every=25",
            "training.log_every=5", "training.eval_every=0"};
  }

  ProcessResult slurm(std::vector<std::string> options, const std::string& run, int steps = 40) {
    std::vector<std::string> argv = {shardlora_binary(), "slurm", kSource + "/recipes/demo.yaml"};
    argv.insert(argv.end(), options.begin(), options.end());
    argv.push_back("--");
    for (const auto& text : overrides(run, steps)) argv.push_back(text);
    return run_process(argv, 60.0);
  }

  // Steps logged in a run's metrics.jsonl, in file order.
  std::vector<int64_t> logged_steps(const std::string& run) const {
    std::vector<int64_t> steps;
    std::ifstream in(path(run + "/metrics.jsonl"));
    for (std::string line; std::getline(in, line);) {
      const auto json = nlohmann::json::parse(line);
      if (json.contains("loss")) {
        steps.push_back(json["step"].get<int64_t>());
        EXPECT_EQ(json["world_size"], 2) << line;
      }
    }
    return steps;
  }

  // Rank 0 alone writes metrics: every logged step once, in order, through the last.
  void expect_complete_run(const std::string& run, int steps) const {
    EXPECT_TRUE(fs::exists(path(run + "/adapter/adapter_model.safetensors"))) << run;
    const auto logged = logged_steps(run);
    ASSERT_FALSE(logged.empty());
    for (size_t i = 1; i < logged.size(); ++i) EXPECT_LT(logged[i - 1], logged[i]) << "step logged twice or out of order";
    EXPECT_EQ(logged.back(), steps);
  }
};

TEST_F(ClusterJob, DryRunWritesABatchScriptForGpuNodes) {
  const auto result = slurm({"--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--account", "proj",
                             "--time", "2:00:00", "--cpus-per-task", "8", "--dry-run"},
                            "run");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("2 nodes x 4 tasks (8 ranks, one GPU each, started by srun)"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("not submitted"), std::string::npos) << result.out;
  const std::string script = read_file(path("run/shardlora.sbatch"));
  for (const char* line : {"#SBATCH --nodes=2\n", "#SBATCH --ntasks-per-node=4\n", "#SBATCH --gpus-per-task=1\n",
                           "#SBATCH --cpus-per-task=8\n", "#SBATCH --partition=gpu\n", "#SBATCH --account=proj\n",
                           "#SBATCH --time=2:00:00\n", "#SBATCH --requeue\n", "#SBATCH --signal=B:TERM@120\n",
                           "LAUNCHER=srun\n", "--auto-resume)", "'training.max_steps=40'"}) {
    EXPECT_NE(script.find(line), std::string::npos) << "missing: " << line;
  }
  EXPECT_EQ(script.find("{{"), std::string::npos) << "a field left unfilled";
  EXPECT_EQ(script.find("#SBATCH --qos"), std::string::npos) << "an option not asked for";
  EXPECT_EQ(run_process({"bash", "-n", path("run/shardlora.sbatch")}).exit_code, 0) << "not valid bash";
}

TEST_F(ClusterJob, WhatWouldFailInTheQueueIsRefusedAtSubmission) {
  const std::vector<std::string> argv = {shardlora_binary(), "slurm", kSource + "/recipes/demo.yaml", "--gpus-per-node", "0", "--dry-run",
                                   "--", "model.path=" + path("model"), "data.train=" + path("nowhere.jsonl")};
  const auto missing_data = run_process(argv);
  EXPECT_EQ(missing_data.exit_code, 1);
  EXPECT_NE(missing_data.err.find("data.train"), std::string::npos) << missing_data.err;

  fs::create_directories(path("taken/checkpoint-000010"));
  const auto taken = slurm({"--gpus-per-node", "0", "--dry-run"}, "taken");
  EXPECT_EQ(taken.exit_code, 1);
  EXPECT_NE(taken.err.find("holds a run"), std::string::npos) << taken.err;
  EXPECT_EQ(slurm({"--gpus-per-node", "0", "--dry-run", "--resume"}, "taken").exit_code, 0) << "--resume continues it";

  const auto uneven = slurm({"--gpus-per-node", "4", "--ntasks-per-node", "3", "--dry-run"}, "run");
  EXPECT_EQ(uneven.exit_code, 1);
  EXPECT_NE(uneven.err.find("one task per GPU"), std::string::npos) << uneven.err;
  EXPECT_EQ(slurm({"--dry-run"}, "run").exit_code, 2) << "--gpus-per-node is required";

  const auto all_warmup = slurm({"--gpus-per-node", "0", "--dry-run"}, "run", /*steps=*/5);  // 5 warmup steps
  EXPECT_EQ(all_warmup.exit_code, 1);
  EXPECT_NE(all_warmup.err.find("beyond warmup_steps (5)"), std::string::npos) << all_warmup.err;
}

TEST_F(ClusterJob, MpirunWithAHostfileRunsTheDemoOnTwoRanks) {
  std::ofstream(path("hostfile")) << "localhost\nlocalhost\n";
  std::string mpirun_args;  // --oversubscribe, and --allow-run-as-root when root
  const auto mpirun = mpirun_command(1, {});
  for (size_t i = 1; i + 2 < mpirun.size(); ++i) mpirun_args += mpirun[i] + " ";
  ::setenv("MPIRUN_ARGS", mpirun_args.c_str(), 1);
  ::setenv("SHARDLORA", shardlora_binary().c_str(), 1);
  std::vector<std::string> argv = {kSource + "/cluster/templates/mpirun-hostfile.sh", path("hostfile"), "2", kSource + "/recipes/demo.yaml"};
  for (const auto& text : overrides("run", 40)) argv.push_back(text);
  const auto result = run_process(argv, 300.0);
  ASSERT_EQ(result.exit_code, 0) << result.out << result.err;
  expect_complete_run("run", 40);
  EXPECT_NE(result.out.find("topology: 2 ranks on 1 node (2 per node, Open MPI), backend mpi"), std::string::npos) << result.out;
  EXPECT_EQ(result.err.find("could not find environment variable"), std::string::npos) << "unset variables forwarded:\n" << result.err;
}

// A Slurm of its own for each test, stopped and removed afterwards.
class LocalSlurm : public ClusterJob {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "the local Slurm runs its daemons as root";
    if (run_process({"sh", "-c", "command -v slurmctld && command -v slurmd && command -v munged"}).exit_code != 0) {
      GTEST_FAIL() << "slurmctld, slurmd or munged is missing: scripts/setup installs them";
    }
    ClusterJob::SetUp();
    // Short: slurmstepd's socket paths under it must fit in 108 bytes.
    char slurm_dir[] = "/tmp/shardlora-slurm-XXXXXX";
    ASSERT_NE(::mkdtemp(slurm_dir), nullptr);
    slurm_dir_ = slurm_dir;
    const auto started = run_process({kSource + "/tests/integration/slurm/local-slurm", "start", slurm_dir_}, 60.0);
    ASSERT_EQ(started.exit_code, 0) << started.out << started.err;
    ASSERT_FALSE(started.timed_out) << "a daemon kept local-slurm's output open";
    ::setenv("SLURM_CONF", (slurm_dir_ + "/slurm.conf").c_str(), 1);
    // mpirun in the batch job runs as root here; sbatch passes the environment on.
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  }
  void TearDown() override {
    if (!slurm_dir_.empty()) run_process({kSource + "/tests/integration/slurm/local-slurm", "stop", slurm_dir_}, 60.0);
    ClusterJob::TearDown();
  }

  std::string submit(const std::vector<std::string>& options, const std::string& run, int steps) {
    const auto result = slurm(options, run, steps);
    EXPECT_EQ(result.exit_code, 0) << result.err;
    std::smatch match;
    if (!std::regex_search(result.out, match, std::regex("submitted job ([0-9]+)"))) {
      ADD_FAILURE() << "no job id in: " << result.out;
      return "";
    }
    return match[1];
  }

  std::string job_field(const std::string& job, const std::string& field) {
    const auto shown = run_process({"scontrol", "show", "job", job});
    std::smatch match;
    if (!std::regex_search(shown.out, match, std::regex(field + "=([^ \n]+)"))) return "";
    return match[1];
  }

  // Polls until `done` holds; false after `seconds`.
  static bool wait_for(const std::function<bool()>& done, double seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      if (done()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    return false;
  }

  // Waits for the requeued job to be pending again, then lets it start at once (Slurm holds a
  // requeued job back for two minutes), and waits for it to complete. Not in the second of the
  // requeue: slurmd refuses every credential of the job issued up to the second it revoked the
  // old run's (cred->ctime <= revoked, in whole seconds), and the job would fail at launch.
  void expect_requeued_and_completed(const std::string& job, const std::string& run) {
    ASSERT_TRUE(wait_for([&] { return job_field(job, "Restarts") == "1" && job_field(job, "JobState") == "PENDING"; }, 120))
        << "not requeued: " << job_field(job, "JobState") << "\n" << read_file(path(run + "/slurm-" + job + ".out"));
    std::this_thread::sleep_for(std::chrono::seconds(2));
    run_process({"scontrol", "update", "jobid=" + job, "starttime=now"});
    ASSERT_TRUE(wait_for([&] { return job_field(job, "JobState") == "COMPLETED"; }, 240))
        << job_field(job, "JobState") << "\n" << read_file(path(run + "/slurm-" + job + ".out"));
  }

  std::string slurm_dir_;
  // Long enough that the job still runs when it is requeued or signalled after its first
  // checkpoint (25) or log line (5); each further step is time on two ranks.
  static constexpr int kSteps = 60;
};

TEST_F(LocalSlurm, ARequeuedJobResumesFromItsCheckpointAndCompletes) {
  const std::string job = submit({"--gpus-per-node", "0", "--ntasks-per-node", "2"}, "run", kSteps);
  ASSERT_FALSE(job.empty());
  ASSERT_TRUE(wait_for([&] { return fs::exists(path("run/checkpoint-000025")); }, 120))
      << job_field(job, "JobState") << "\n" << read_file(path("run/slurm-" + job + ".out"));
  EXPECT_EQ(run_process({"scontrol", "requeue", job}).exit_code, 0);
  expect_requeued_and_completed(job, "run");
  const std::string log = read_file(path("run/slurm-" + job + ".out"));
  EXPECT_NE(log.find("2 tasks by mpirun"), std::string::npos) << log;
  EXPECT_NE(log.find("topology: 2 ranks on 1 node (2 per node, Open MPI), backend mpi"), std::string::npos) << log;
  EXPECT_NE(log.find("restart 1"), std::string::npos) << log;
  // Resumed, not started over: the restarted job logs no step before the first checkpoint.
  const std::string restarted = log.substr(std::min(log.find("restart 1"), log.size()));
  const std::string of_steps = "/" + std::to_string(kSteps) + " ";
  EXPECT_EQ(restarted.find("step 5" + of_steps), std::string::npos) << log;
  EXPECT_NE(restarted.find("step " + std::to_string(kSteps) + of_steps), std::string::npos) << log;
  expect_complete_run("run", kSteps);
}

TEST_F(LocalSlurm, TheTimeLimitWarningCheckpointsRequeuesAndTheJobCompletes) {
  // What --signal=B:TERM@120 sends before the time limit, sent now.
  const std::string job = submit({"--gpus-per-node", "0", "--ntasks-per-node", "2", "--launcher", "srun"}, "run", kSteps);
  ASSERT_FALSE(job.empty());
  ASSERT_TRUE(wait_for([&] { return !logged_steps("run").empty(); }, 120)) << read_file(path("run/slurm-" + job + ".out"));
  EXPECT_EQ(run_process({"scancel", "--batch", "--signal=TERM", job}).exit_code, 0);
  expect_requeued_and_completed(job, "run");
  const std::string log = read_file(path("run/slurm-" + job + ".out"));
  EXPECT_NE(log.find("2 tasks by srun"), std::string::npos) << log;
  EXPECT_NE(log.find("topology: 2 ranks on 1 node (2 per node, Slurm), backend tcp"), std::string::npos) << log;
  EXPECT_NE(log.find("requeueing job " + job), std::string::npos) << log;
  expect_complete_run("run", kSteps);
}

}  // namespace
