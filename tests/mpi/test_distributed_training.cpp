// `shardlora train` under real mpirun: N ranks with micro-batch B take the steps one rank
// takes with micro-batch N*B (losses and adapters equal within fp32 reduction tolerance),
// only adapter gradients are all-reduced (byte counters), rank 0 alone writes the run, and a
// checkpoint written by 2 ranks resumes on 3 with the same result.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "shardlora/io/tensor_file.h"
#include "shardlora/nn/random_model.h"
#include "shardlora_paths.h"
#include "subprocess.h"
#include "temp_dir.h"

using namespace shardlora;
using namespace shardlora::testing;
namespace fs = std::filesystem;

namespace {

constexpr int kGlobalBatch = 6;  // divisible by 1, 2 and 3 ranks
constexpr int kSteps = 12;       // two epochs of the 36 samples

class DistributedTraining : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    nn::write_random_hf_model(path("model"), {});
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
                                       << "distributed:\n  strategy: replicate\n  bucket_mb: 1\n";
  }

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
  for (int ranks : {2, 3}) {
    const std::string run = "run" + std::to_string(ranks);
    const auto result = train(ranks, run);
    ASSERT_FALSE(result.timed_out) << "mpirun hung";
    ASSERT_EQ(result.exit_code, 0) << result.out << result.err;
    // Rank 0 alone reports.
    size_t reports = 0;
    for (size_t at = 0; (at = result.out.find("trained 12/12 steps", at)) != std::string::npos; ++at) ++reports;
    EXPECT_EQ(reports, 1u) << result.out;
    expect_same_training("run1", run);
    EXPECT_EQ(metrics(run).back()["world_size"], ranks);
  }
}

TEST_F(DistributedTraining, OnlyAdapterGradientsAreAllReduced) {
  const auto result = train(2, "run");
  ASSERT_EQ(result.exit_code, 0) << result.out << result.err;
  int64_t adapter_bytes = 0;
  for (const auto& [name, tensor] : adapter("run")) adapter_bytes += tensor.numel() * 4;  // fp32 gradients
  const auto lines = metrics("run");
  ASSERT_EQ(lines.size(), static_cast<size_t>(kSteps));
  for (const auto& line : lines) {
    const int64_t step = line["step"].get<int64_t>();
    const auto& comm = line["comm"];
    EXPECT_EQ(comm["gradient_bytes"].get<int64_t>(), adapter_bytes * step) << "step " << step;
    // Besides the gradients, one 32-byte reduction per step (loss, targets, tokens, stop).
    EXPECT_EQ(comm["allreduce_bytes"].get<int64_t>(), (adapter_bytes + 32) * step) << "step " << step;
    EXPECT_EQ(comm["reduce_scatter_bytes"].get<int64_t>(), 0);
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

TEST_F(DistributedTraining, ShardStrategyIsRefusedUntilItExists) {
  const auto result = train(2, "run", {"distributed.strategy=shard"});
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.err.find("distributed.strategy 'shard'"), std::string::npos) << result.err;
}
