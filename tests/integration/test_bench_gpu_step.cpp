// bench_gpu_step and gpu_step_ratios.py, the GPU benchmark of issue 21, run here on a tiny
// model on the CPU: every code path the GPU run takes (random quantized model, the step, the
// per-part timings, the doubling search, the JSON), so a slip shows before GPU time is spent.
// A random model's first loss is near ln(vocab) per target; the ratios script divides ours
// by the peer's figures.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "subprocess.h"
#include "temp_dir.h"

using namespace shardlora::testing;

namespace {

class BenchGpuStep : public TempDirTest {};

constexpr int64_t kVocab = 512, kSeq = 64;  // bench_gpu_step's tiny model; its targets per row: seq - 1

}  // namespace

TEST_F(BenchGpuStep, RunsEveryPartOnATinyModelOnTheCpu) {
  const ProcessResult run = run_process({SHARDLORA_BENCH_GPU_STEP, "--device", "cpu", "--model", "tiny", "--seq", std::to_string(kSeq),
                                         "--steps", "1", "--max-seq", "256", "--json", path("ours-tiny.json")});
  ASSERT_EQ(run.exit_code, 0) << run.out << run.err;
  const nlohmann::json figures = nlohmann::json::parse(read_file(path("ours-tiny.json")));
  EXPECT_EQ(figures["device"], "CPU");
  EXPECT_EQ(figures["longest_seq"], 256) << "nothing runs out of memory on a tiny model: the search reaches --max-seq";
  std::set<std::pair<int64_t, bool>> configs;
  for (const auto& run_figures : figures["runs"]) {
    const int64_t micro_batch = run_figures["micro_batch"];
    configs.insert({micro_batch, run_figures["checkpointing"].get<bool>()});
    const double per_target = run_figures["first_loss"].get<double>() / static_cast<double>(micro_batch * (kSeq - 1));
    EXPECT_NEAR(per_target, std::log(static_cast<double>(kVocab)), 0.05 * std::log(static_cast<double>(kVocab)));
    EXPECT_GT(run_figures["tokens_per_second"].get<double>(), 0);
    for (const char* part : {"attention", "base matmuls", "dequantize", "loss", "optimizer"}) {
      EXPECT_GT(run_figures["parts"][part].get<double>(), 0) << part;
    }
  }
  EXPECT_EQ(configs, (std::set<std::pair<int64_t, bool>>{{1, false}, {1, true}, {2, false}, {2, true}}));
}

TEST_F(BenchGpuStep, RatiosDivideOursByThePeers) {
  const nlohmann::json ours = {{"device", "CPU"}, {"model", "tiny"}, {"layers", 2}, {"max_seq", 4096}, {"longest_seq", 4096},
                               {"runs", {{{"micro_batch", 1}, {"checkpointing", true}, {"tokens_per_second", 3000.0},
                                          {"peak_allocated_gib", 2.0}},
                                         {{"micro_batch", 2}, {"checkpointing", false}, {"tokens_per_second", 5000.0},
                                          {"peak_allocated_gib", 4.0}}}}};
  const nlohmann::json peer = {{"versions", {{"transformers", "4.0"}, {"peft", "0.1"}}}, {"longest_seq", 512},
                               {"runs", {{{"micro_batch", 1}, {"checkpointing", true}, {"tokens_per_second", 2000.0},
                                          {"peak_allocated_gib", 8.0}},
                                         {{"micro_batch", 2}, {"checkpointing", false}, {"out_of_memory", true}}}}};
  std::ofstream(path("ours-tiny.json")) << ours.dump();
  std::ofstream(path("peer-tiny.json")) << peer.dump();
  const ProcessResult run = run_process({"python3", SHARDLORA_SOURCE_DIR "/bench/gpu_step_ratios.py", root_.string()});
  ASSERT_EQ(run.exit_code, 0) << run.out << run.err;
  EXPECT_NE(run.out.find("1.50x"), std::string::npos) << "3000 / 2000 tokens/s:\n" << run.out;
  EXPECT_NE(run.out.find("0.25x"), std::string::npos) << "2 / 8 GiB:\n" << run.out;
  EXPECT_NE(run.out.find("out of memory"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("8.0x (ours reached the longest tried"), std::string::npos) << "4096 / 512, a lower bound:\n" << run.out;
}

TEST_F(BenchGpuStep, RejectsAnUnknownDeviceOrModel) {
  for (const auto& [flag, value] : {std::pair{"--device", "tpu"}, std::pair{"--model", "13b"}}) {
    const ProcessResult run = run_process({SHARDLORA_BENCH_GPU_STEP, flag, value});
    EXPECT_EQ(run.exit_code, 2) << flag << " " << value << ": " << run.out << run.err;
    EXPECT_NE(run.err.find(value), std::string::npos) << run.err;
  }
}
