// `shardlora train` under real mpirun: N ranks with micro-batch B take the steps one rank
// takes with micro-batch N*B (losses and adapters equal within fp32 reduction tolerance),
// with the base sharded or replicated; only adapter gradients are all-reduced and the
// sharded base moves only by all-gather (byte counters); rank 0 alone writes the run; a
// checkpoint written by 2 ranks resumes on 3 with the same result; shardlora launch does the
// same without mpirun, on one node or on two meeting at node 0's store; a killed or stopped
// rank ends the job.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "shardlora/io/tensor_file.h"
#include "shardlora/nn/random_model.h"
#include "shardlora/train/trainer.h"
#include "shardlora_paths.h"
#include "subprocess.h"
#include "temp_dir.h"

using namespace shardlora;
using namespace shardlora::testing;
namespace fs = std::filesystem;

namespace {

constexpr int kGlobalBatch = 6;  // divisible by 1, 2 and 3 ranks
constexpr int kSteps = 12;       // two epochs of the 36 samples
constexpr int64_t kLayers = 4;

nn::RandomModelSpec model_spec() {
  nn::RandomModelSpec spec;
  spec.layers = kLayers;
  return spec;
}

// What one all-gather of a layer of the sharded base moves on `ranks` ranks: the layer's
// Linears in units of 64 x 256 elements (8192 code bytes, 256 absmax bytes, one float),
// split evenly over the ranks.
int64_t layer_gather_bytes(int ranks) {
  const nn::RandomModelSpec s = model_spec();
  const int64_t head_dim = s.hidden / s.heads, unit = 64 * 256;
  int64_t units = 0;
  for (int64_t size : {s.hidden * s.hidden, s.kv_heads * head_dim * s.hidden, s.kv_heads * head_dim * s.hidden,
                       s.hidden * s.hidden, s.intermediate * s.hidden, s.intermediate * s.hidden, s.intermediate * s.hidden}) {
    units += (size + unit - 1) / unit;
  }
  return ranks * ((units + ranks - 1) / ranks) * (8192 + 256 + 4);
}

class DistributedTraining : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    nn::write_random_hf_model(path("model"), model_spec());
    std::ofstream data(path("chat.jsonl"));
    for (int i = 0; i < 36; ++i) {
      data << R"({"messages": [{"role": "user", "content": "count )" << i << R"( up"}, {"role": "assistant", "content": ")"
           << std::string(static_cast<size_t>(1 + i % 5), static_cast<char>('a' + i % 26)) << R"("}]})" << "\n";
    }
    // No dropout and a constant rate: nothing but the data order could tell the runs apart.
    std::ofstream(path("recipe.yaml")) << "model:\n  path: " << path("model") << "\n  dtype: fp32\n"
                                       << "data:\n  train: " << path("chat.jsonl") << "\n  max_seq_len: 64\n"
                                       << "lora:\n  r: 4\n  dropout: 0.0\n"
                                       << "optimizer:\n  name: adamw\n  lr: 0.002\n"
                                       << "schedule:\n  type: constant\n"
                                       << "training:\n  max_steps: " << kSteps << "\n  log_every: 1\n  save_every: 6\n"
                                       << "distributed:\n  bucket_mb: 1\n";
  }

  // `shardlora launch --nproc-per-node N -- train ...`: no mpirun.
  std::vector<std::string> launch_command(int ranks, const std::string& run, std::vector<std::string> extra = {}) {
    std::vector<std::string> command = {shardlora_binary(), "launch", "--nproc-per-node", std::to_string(ranks), "--grace-s", "5", "--",
                                        "train", path("recipe.yaml"), "output.dir=" + path(run),
                                        "training.micro_batch_size=" + std::to_string(kGlobalBatch / ranks)};
    command.insert(command.end(), extra.begin(), extra.end());
    return command;
  }

  std::vector<std::string> long_mpirun_run(const std::string& run);

  // Trains on `ranks` processes (1: no mpirun) with the global batch split evenly.
  ProcessResult train(int ranks, const std::string& run, std::vector<std::string> extra = {}) {
    std::vector<std::string> command = {shardlora_binary(), "train", path("recipe.yaml"), "output.dir=" + path(run),
                                        "training.micro_batch_size=" + std::to_string(kGlobalBatch / ranks)};
    command.insert(command.end(), extra.begin(), extra.end());
    return run_process(ranks == 1 ? command : mpirun_command(ranks, command), 600.0);
  }

  std::vector<nlohmann::json> metrics(const std::string& run) {
    std::vector<nlohmann::json> lines;
    std::ifstream in(path(run + "/metrics.jsonl"));
    for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
    return lines;
  }

  // The newest checkpoint of `run` is whole: training resumes from it on `ranks` ranks for
  // two more steps.
  void expect_newest_checkpoint_resumes(const std::string& run, int ranks) {
    const auto saved = train::checkpoints(path(run));
    ASSERT_FALSE(saved.empty()) << run << " holds no checkpoint";
    const int step = std::stoi(saved.back().filename().string().substr(std::string("checkpoint-").size()));
    const auto resumed = train(ranks, run, {"--resume", "training.max_steps=" + std::to_string(step + 2)});
    EXPECT_EQ(resumed.exit_code, 0) << resumed.out << resumed.err;
  }

  std::map<std::string, torch::Tensor> adapter(const std::string& run) {
    return io::read_tensor_file(path(run + "/adapter/adapter_model.safetensors"));
  }

  void expect_same_training(const std::string& reference, const std::string& run) {
    const auto expected = metrics(reference), got = metrics(run);
    ASSERT_EQ(got.size(), expected.size()) << run;
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i]["targets"], expected[i]["targets"]) << run << " step " << i + 1;
      EXPECT_NEAR(got[i]["loss"].get<double>(), expected[i]["loss"].get<double>(), 2e-5 * expected[i]["loss"].get<double>())
          << run << " step " << i + 1;
    }
    const auto want = adapter(reference), have = adapter(run);
    ASSERT_EQ(have.size(), want.size());
    for (const auto& [name, tensor] : want) {
      ASSERT_TRUE(have.count(name)) << name;
      const double scale = tensor.abs().max().item<double>();
      EXPECT_LT((have.at(name) - tensor).abs().max().item<double>(), 1e-4 * std::max(scale, 1e-3)) << run << " " << name;
    }
  }
};

}  // namespace

TEST_F(DistributedTraining, TwoAndThreeRanksTakeTheStepsOfOne) {
  const auto single = train(1, "run1");
  ASSERT_EQ(single.exit_code, 0) << single.err;
  for (const std::string strategy : {"shard", "replicate"}) {
    for (int ranks : {2, 3}) {
      const std::string run = strategy + std::to_string(ranks);
      const auto result = train(ranks, run, {"distributed.strategy=" + strategy});
      ASSERT_FALSE(result.timed_out) << "mpirun hung";
      ASSERT_EQ(result.exit_code, 0) << result.out << result.err;
      // Rank 0 alone reports.
      size_t reports = 0;
      for (size_t at = 0; (at = result.out.find("trained 12/12 steps", at)) != std::string::npos; ++at) ++reports;
      EXPECT_EQ(reports, 1u) << result.out;
      const std::string topology = "topology: " + std::to_string(ranks) + " ranks on 1 node (" + std::to_string(ranks) +
                                   " per node, Open MPI), backend mpi, strategy " + strategy + ";";
      EXPECT_NE(result.out.find(topology), std::string::npos) << result.out;
      // Two or three ranks on this 2-core machine: one thread each.
      EXPECT_NE(result.out.find("  ranks 0-" + std::to_string(ranks - 1) + ": cpu (1 thread)\n"), std::string::npos) << result.out;
      EXPECT_EQ(result.out.find("topology:"), result.out.rfind("topology:")) << "printed by rank 0 alone";
      expect_same_training("run1", run);
      EXPECT_EQ(metrics(run).back()["world_size"], ranks);
    }
  }
}

// DoRA's norms need each whole layer: with the base sharded they are taken from the gathered
// layer (the magnitudes' start too, while the model is built), so two ranks train as one.
TEST_F(DistributedTraining, DoraOnAShardedBaseTakesTheStepsOfOneRank) {
  const auto single = train(1, "dora1", {"lora.use_dora=true"});
  ASSERT_EQ(single.exit_code, 0) << single.err;
  const auto sharded = train(2, "dora_shard2", {"lora.use_dora=true", "distributed.strategy=shard"});
  ASSERT_FALSE(sharded.timed_out) << "mpirun hung";
  ASSERT_EQ(sharded.exit_code, 0) << sharded.out << sharded.err;
  expect_same_training("dora1", "dora_shard2");
  EXPECT_EQ(adapter("dora1").size(), 3u * 7 * kLayers) << "A, B and a magnitude vector per Linear";
}

// Added tokens' rows are replicated parameters beside a sharded base: their gradients are
// all-reduced with the adapters', so two ranks train them as one does.
TEST_F(DistributedTraining, AddedTokenRowsOnAShardedBaseTakeTheStepsOfOneRank) {
  const std::string tokens = "data.add_special_tokens=[<|a|>, <|b|>]";
  const auto single = train(1, "tokens1", {tokens});
  ASSERT_EQ(single.exit_code, 0) << single.err;
  const auto sharded = train(2, "tokens_shard2", {tokens, "distributed.strategy=shard"});
  ASSERT_FALSE(sharded.timed_out) << "mpirun hung";
  ASSERT_EQ(sharded.exit_code, 0) << sharded.out << sharded.err;
  expect_same_training("tokens1", "tokens_shard2");
  EXPECT_EQ(adapter("tokens1").count("base_model.model.lm_head.token_adapter.trainable_tokens_delta"), 1u);
}

TEST_F(DistributedTraining, OnlyAdapterGradientsAreAllReducedAndTheBaseOnlyGathered) {
  const auto sharded = train(2, "shard");
  ASSERT_EQ(sharded.exit_code, 0) << sharded.out << sharded.err;
  const auto replicated = train(2, "replicate", {"distributed.strategy=replicate"});
  ASSERT_EQ(replicated.exit_code, 0) << replicated.out << replicated.err;
  int64_t adapter_bytes = 0;
  for (const auto& [name, tensor] : adapter("shard")) adapter_bytes += tensor.numel() * 4;  // fp32 gradients
  const auto lines = metrics("shard"), reference = metrics("replicate");
  ASSERT_EQ(lines.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(reference.size(), static_cast<size_t>(kSteps));
  for (size_t i = 0; i < lines.size(); ++i) {
    const int64_t step = lines[i]["step"].get<int64_t>();
    for (const auto* line : {&lines[i], &reference[i]}) {
      const auto& comm = (*line)["comm"];
      EXPECT_EQ(comm["gradient_bytes"].get<int64_t>(), adapter_bytes * step) << "step " << step;
      // Besides the gradients, one 32-byte reduction per step (loss, targets, tokens, stop).
      EXPECT_EQ(comm["allreduce_bytes"].get<int64_t>(), (adapter_bytes + 32) * step) << "step " << step;
      EXPECT_EQ(comm["reduce_scatter_bytes"].get<int64_t>(), 0);
    }
    // The sharded base's layers, all-gathered: 2L-2 in the first step (forward 0..L-1, then
    // backward; two layers stay resident at each turn), 2L-4 in each later one. The rest
    // (checkpoints' data positions) is what the replicated run gathers too.
    const int64_t layers_gathered = 2 * kLayers - 2 + (step - 1) * (2 * kLayers - 4);
    EXPECT_EQ(lines[i]["comm"]["allgather_bytes"].get<int64_t>() - reference[i]["comm"]["allgather_bytes"].get<int64_t>(),
              layers_gathered * layer_gather_bytes(2))
        << "step " << step;
    EXPECT_EQ(lines[i]["comm"]["broadcast_bytes"], reference[i]["comm"]["broadcast_bytes"]);
  }
}

TEST_F(DistributedTraining, ACheckpointOfTwoRanksResumesOnThree) {
  ASSERT_EQ(train(1, "run1").exit_code, 0);
  const auto first = train(2, "run", {"training.max_steps=6"});
  ASSERT_EQ(first.exit_code, 0) << first.out << first.err;
  ASSERT_TRUE(fs::exists(path("run/checkpoint-000006/trainer_state.json")));
  const auto resumed = train(3, "run", {"--resume"});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.out << resumed.err;
  EXPECT_NE(resumed.err.find("written by 2 ranks, resumed on 3"), std::string::npos) << resumed.err;
  EXPECT_NE(resumed.err.find("(0 samples read again)"), std::string::npos) << resumed.err;
  expect_same_training("run1", "run");
}

TEST_F(DistributedTraining, ShardingAFloatBaseIsRefusedWithTheWayOut) {
  const auto result = train(2, "run", {"model.quantization.type=none"});
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.err.find("distributed.strategy replicate"), std::string::npos) << result.err;
}

TEST_F(DistributedTraining, EvaluationOfUnevenSharesMatchesOneRank) {
  // 5 validation samples one row at a time: rank 0 runs 3 forwards, rank 1 two (and one more
  // to keep the sharded base's gathers in step).
  std::ofstream val(path("val.jsonl"));
  for (int i = 0; i < 5; ++i) {
    val << R"({"messages": [{"role": "user", "content": "say )" << i << R"("}, {"role": "assistant", "content": "ok )" << i << R"("}]})" << "\n";
  }
  val.close();
  const std::vector<std::string> eval = {"data.val=" + path("val.jsonl"), "training.max_steps=2", "training.eval_every=1",
                                         "distributed.timeout_s=30"};  // a stall fails fast
  auto with = [&](std::vector<std::string> extra, const std::string& micro) {
    extra.push_back("training.micro_batch_size=" + micro);
    return extra;
  };
  ASSERT_EQ(train(1, "one", with(eval, "2")).exit_code, 0);
  const auto result = train(2, "two", with(eval, "1"));
  ASSERT_FALSE(result.timed_out) << "ranks stalled in evaluation";
  ASSERT_EQ(result.exit_code, 0) << result.out << result.err;
  std::vector<double> want, got;
  for (const auto& line : metrics("one")) {
    if (line.contains("eval_loss")) want.push_back(line["eval_loss"].get<double>());
  }
  for (const auto& line : metrics("two")) {
    if (line.contains("eval_loss")) got.push_back(line["eval_loss"].get<double>());
  }
  ASSERT_EQ(want.size(), 2u);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-4 * want[i]) << "evaluation " << i;
}

TEST_F(DistributedTraining, LaunchTrainsWithoutMpirunOverTcp) {
  ASSERT_EQ(train(1, "run1").exit_code, 0);
  const auto result = run_process(launch_command(2, "launched"), 600.0);
  ASSERT_FALSE(result.timed_out);
  ASSERT_EQ(result.exit_code, 0) << result.out << result.err;
  expect_same_training("run1", "launched");
  EXPECT_EQ(metrics("launched").back()["world_size"], 2);
  EXPECT_EQ(metrics("launched").back()["comm"]["backend"], "tcp");
  EXPECT_NE(result.out.find("topology: 2 ranks on 1 node (2 per node, shardlora launch), backend tcp"), std::string::npos) << result.out;
}

namespace {

// A loopback port free a moment ago: node 0's store must listen where node 1 already looks.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), length), 0);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

}  // namespace

// Two "nodes" on this host, one rank each, meeting at node 0's store; node 1 starts first
// and waits for it. Without a shared token node 1 is refused before it starts a rank.
TEST_F(DistributedTraining, LaunchOnTwoNodesMeetsAtNodeZerosStore) {
  ASSERT_EQ(train(1, "run1").exit_code, 0);
  std::ofstream(path("token")) << "a-secret-both-nodes-read\n";
  const std::string rdzv = "127.0.0.1:" + std::to_string(free_port());
  const auto node = [&](int node_rank) {
    std::vector<std::string> command = {"env", "SHARDLORA_STORE_TOKEN_FILE=" + path("token"), shardlora_binary(), "launch", "--nnodes", "2",
                                        "--node-rank", std::to_string(node_rank), "--rdzv", rdzv, "--nproc-per-node", "1", "--grace-s", "5",
                                        "--", "train", path("recipe.yaml"), "output.dir=" + path("nodes"),
                                        "training.micro_batch_size=" + std::to_string(kGlobalBatch / 2)};
    return run_process(command, 600.0);
  };
  auto second = std::async(std::launch::async, node, 1);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const auto first = node(0);
  const auto late = second.get();
  ASSERT_EQ(first.exit_code, 0) << first.out << first.err;
  ASSERT_EQ(late.exit_code, 0) << late.out << late.err;
  expect_same_training("run1", "nodes");
  EXPECT_EQ(metrics("nodes").back()["world_size"], 2);
  EXPECT_NE(first.out.find("topology: 2 ranks on 1 node (2 per node, shardlora launch), backend tcp"), std::string::npos) << first.out;

  const auto untokened = run_process({shardlora_binary(), "launch", "--nnodes", "2", "--node-rank", "1", "--rdzv", rdzv, "--nproc-per-node", "1", "--",
                                      "train", path("recipe.yaml")});
  EXPECT_EQ(untokened.exit_code, 1);
  EXPECT_NE(untokened.err.find("SHARDLORA_STORE_TOKEN_FILE"), std::string::npos) << untokened.err;
}

namespace {

// A long run started by `launcher` (mpirun or shardlora launch); once rank 0 has logged past
// the step-6 checkpoint (or, with `at_start`, as soon as the rank's process exists, before it
// has joined the job), `signal` goes to rank `rank` (found among the launcher's children by
// its rank variable). Returns the launcher's exit and how many seconds it took after the
// signal (printed by the script as "launcher exited S after T s").
struct Failure {
  ProcessResult result;
  int seconds_after_signal = -1;
};

Failure signal_rank(int rank, const std::string& run, const std::string& signal, const std::string& rank_variable,
                    const std::vector<std::string>& launcher, bool at_start = false) {
  const std::string script = R"sh(
"$@" & launcher=$!
if [ "$AT_START" = 0 ]; then
  for i in $(seq 1200); do [ "$(cat "$RUN/metrics.jsonl" 2>/dev/null | wc -l)" -ge 8 ] && break; sleep 0.05; done
fi
for i in $(seq 2000); do
  for pid in $(pgrep -P $launcher); do
    if tr '\0' '\n' < /proc/$pid/environ 2>/dev/null | grep -qx "$RANK_VARIABLE=$RANK"; then kill -$SIGNAL $pid; signalled=1; fi
  done
  [ -n "$signalled" ] && break
  sleep 0.01
done
start=$(date +%s)
wait $launcher; status=$?
echo "launcher exited $status after $(( $(date +%s) - start )) s"
exit $status
)sh";
  std::vector<std::string> command = {"env", "RUN=" + run, "SIGNAL=" + signal, "RANK_VARIABLE=" + rank_variable,
                                      "RANK=" + std::to_string(rank), "AT_START=" + std::string(at_start ? "1" : "0"),
                                      "bash", "-c", script, "bash"};
  command.insert(command.end(), launcher.begin(), launcher.end());
  Failure failure{run_process(command, 300.0)};
  const auto at = failure.result.out.find("launcher exited");
  if (at != std::string::npos) failure.seconds_after_signal = std::stoi(failure.result.out.substr(failure.result.out.find("after", at) + 6));
  return failure;
}

constexpr int kFailureTimeoutS = 10;  // distributed.timeout_s of the failure tests

}  // namespace

// Two ranks under mpirun training "forever" into `run`, for a signal to interrupt.
std::vector<std::string> DistributedTraining::long_mpirun_run(const std::string& run) {
  return mpirun_command(2, {shardlora_binary(), "train", path("recipe.yaml"), "output.dir=" + path(run), "training.micro_batch_size=3",
                            "training.max_steps=100000", "distributed.timeout_s=" + std::to_string(kFailureTimeoutS)});
}

TEST_F(DistributedTraining, LaunchStopsEveryRankWhenOneIsKilledAndTheCheckpointResumes) {
  const auto failure = signal_rank(1, path("killed"), "KILL", "SHARDLORA_RANK",
                                       launch_command(2, "killed", {"training.max_steps=100000", "distributed.timeout_s=20"}));
  const auto& result = failure.result;
  ASSERT_FALSE(result.timed_out) << result.out << result.err;
  EXPECT_EQ(result.exit_code, 128 + 9) << "the killed rank's status: " << result.out << result.err;
  EXPECT_NE(result.err.find("rank 1"), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("killed by signal 9"), std::string::npos) << result.err;
  // Well within distributed.timeout_s + 10 s: the lost connection is noticed at once.
  ASSERT_GE(failure.seconds_after_signal, 0) << result.out;
  EXPECT_LE(failure.seconds_after_signal, 30) << result.out;
  expect_newest_checkpoint_resumes("killed", 1);
}

TEST_F(DistributedTraining, MpirunStopsEveryRankWhenOneIsKilledAndTheCheckpointResumes) {
  const auto failure = signal_rank(1, path("killed"), "KILL", "OMPI_COMM_WORLD_RANK", long_mpirun_run("killed"));
  const auto& result = failure.result;
  ASSERT_FALSE(result.timed_out) << result.out << result.err;
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE((result.out + result.err).find("rank 1"), std::string::npos) << result.out << result.err;
  ASSERT_GE(failure.seconds_after_signal, 0) << result.out;
  EXPECT_LE(failure.seconds_after_signal, kFailureTimeoutS + 10) << result.out;
  expect_newest_checkpoint_resumes("killed", 2);
}

// A SIGSTOPped rank neither exits nor closes a socket: only its silence gives it away. The
// watchdog names it (half of distributed.timeout_s) before any collective times out.
TEST_F(DistributedTraining, AStoppedRankIsNamedByTheWatchdogUnderMpirun) {
  const auto failure = signal_rank(1, path("stopped"), "STOP", "OMPI_COMM_WORLD_RANK", long_mpirun_run("stopped"));
  const auto& result = failure.result;
  ASSERT_FALSE(result.timed_out) << result.out << result.err;
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.err.find("shardlora (rank 0 of 2): lost rank 1: no heartbeat for"), std::string::npos) << result.err;
  ASSERT_GE(failure.seconds_after_signal, 0) << result.out;
  EXPECT_LE(failure.seconds_after_signal, kFailureTimeoutS + 10) << result.out;
  EXPECT_FALSE(train::checkpoints(path("stopped")).empty());
}

TEST_F(DistributedTraining, AStoppedRankIsNamedByTheWatchdogUnderLaunch) {
  const auto failure = signal_rank(1, 
      path("stopped"), "STOP", "SHARDLORA_RANK",
      launch_command(2, "stopped", {"training.max_steps=100000", "distributed.timeout_s=" + std::to_string(kFailureTimeoutS)}));
  const auto& result = failure.result;
  ASSERT_FALSE(result.timed_out) << result.out << result.err;
  EXPECT_EQ(result.exit_code, 1) << result.out << result.err;
  EXPECT_NE(result.err.find("shardlora (rank 0 of 2): lost rank 1: no heartbeat for"), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("shardlora launch: rank 0 exited with status 1"), std::string::npos) << result.err;
  ASSERT_GE(failure.seconds_after_signal, 0) << result.out;
  // The watchdog's limit, then the launcher's grace (5 s) for the stopped rank.
  EXPECT_LE(failure.seconds_after_signal, kFailureTimeoutS + 10) << result.out;
}

// Rank 0 serves the store under mpirun: stopped, it falls silent with the store, and the
// others name it within the watchdog's limit (their store requests time out as a beat would).
TEST_F(DistributedTraining, AStoppedRankZeroIsNamedByTheOthersUnderMpirun) {
  const auto failure = signal_rank(0, path("stopped"), "STOP", "OMPI_COMM_WORLD_RANK", long_mpirun_run("stopped"));
  const auto& result = failure.result;
  ASSERT_FALSE(result.timed_out) << result.out << result.err;
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.err.find("shardlora (rank 1 of 2): rank 0 (it serves the job's store under mpirun) is unreachable"), std::string::npos)
      << result.err;
  ASSERT_GE(failure.seconds_after_signal, 0) << result.out;
  EXPECT_LE(failure.seconds_after_signal, kFailureTimeoutS + 10) << result.out;
}

// Stopped before it joins (MPI_Init, the store, the watchdog): no heartbeat exists yet to
// miss, and the others would wait in MPI_Init for good; the join deadline ends the job.
TEST_F(DistributedTraining, ARankStoppedBeforeItJoinsEndsTheJobUnderMpirun) {
  const auto failure = signal_rank(1, path("early"), "STOP", "OMPI_COMM_WORLD_RANK", long_mpirun_run("early"), /*at_start=*/true);
  const auto& result = failure.result;
  ASSERT_FALSE(result.timed_out) << result.out << result.err;
  EXPECT_NE(result.exit_code, 0);
  const bool named = result.err.find("shardlora (rank 0 of 2): the job did not assemble within 10 s") != std::string::npos ||
                     result.err.find("shardlora (rank 0 of 2): lost rank 1: no heartbeat") != std::string::npos;
  EXPECT_TRUE(named) << result.err;
  ASSERT_GE(failure.seconds_after_signal, 0) << result.out;
  EXPECT_LE(failure.seconds_after_signal, kFailureTimeoutS + 10) << result.out;
}

TEST_F(DistributedTraining, ARankStoppedBeforeItJoinsEndsTheJobUnderLaunch) {
  const auto failure = signal_rank(
      1, path("early"), "STOP", "SHARDLORA_RANK",
      launch_command(2, "early", {"training.max_steps=100000", "distributed.timeout_s=" + std::to_string(kFailureTimeoutS)}),
      /*at_start=*/true);
  const auto& result = failure.result;
  ASSERT_FALSE(result.timed_out) << result.out << result.err;
  EXPECT_EQ(result.exit_code, 1) << result.out << result.err;
  EXPECT_NE(result.err.find("shardlora launch: rank 0 exited with status 1"), std::string::npos) << result.err;
  ASSERT_GE(failure.seconds_after_signal, 0) << result.out;
  EXPECT_LE(failure.seconds_after_signal, kFailureTimeoutS + 10) << result.out;
}

// Frozen while it loads the model: the fault shim stops rank 1 as it opens model.safetensors.
// Its watchdog, beating since it joined, falls silent with it, and rank 0 names it.
TEST_F(DistributedTraining, ARankStoppedWhileLoadingTheModelIsNamedUnderMpirun) {
  std::vector<std::string> command = {"env", std::string("LD_PRELOAD=") + SHARDLORA_FAULT_SHIM,
                                      "SHARDLORA_FAULT_STOP_AT_OPEN=" + path("model") + "/model.safetensors",
                                      "SHARDLORA_FAULT_ONLY_IF=OMPI_COMM_WORLD_RANK=1"};
  const auto job = long_mpirun_run("loading");
  command.insert(command.end(), job.begin(), job.end());
  const auto start = std::chrono::steady_clock::now();
  const auto result = run_process(command, 120.0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(result.timed_out) << result.out << result.err;
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.err.find("fault-injection: SIGSTOP at open"), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("shardlora (rank 0 of 2): lost rank 1: no heartbeat for"), std::string::npos) << result.err;
  EXPECT_LE(seconds, kFailureTimeoutS + 10) << "from mpirun's start, loading included";
  EXPECT_FALSE(fs::exists(path("loading/metrics.jsonl"))) << "no step was taken";
}
