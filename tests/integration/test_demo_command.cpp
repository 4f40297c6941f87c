// The built-in demo end to end, as the README runs it: `shardlora train` with no recipe
// learns the reversal task (accuracy from about zero to above 90%, loss falling), writes a
// PEFT adapter; `shardlora eval` reproduces its numbers from the run's recipe; `generate
// --recipe` answers in the recipe's template; `plot` draws its curves; a second run refuses
// to overwrite the first.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "shardlora_paths.h"
#include "subprocess.h"
#include "temp_dir.h"

using namespace shardlora::testing;
namespace fs = std::filesystem;

namespace {

std::vector<nlohmann::json> json_lines(const std::string& file) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

}  // namespace

class DemoCommand : public TempDirTest {};

TEST_F(DemoCommand, LearnsTheTaskAndItsRunIsUsable) {
  const std::string run = path("demo");
  const auto demo = run_process({shardlora_binary(), "train", "output.dir=" + run}, 900.0);
  ASSERT_EQ(demo.exit_code, 0) << demo.out << demo.err;
  EXPECT_NE(demo.out.find("accuracy before training"), std::string::npos) << demo.out;
  EXPECT_NE(demo.out.find("step 300/300"), std::string::npos) << "plain progress lines when not a terminal:\n" << demo.out;

  const auto report = nlohmann::json::parse(std::ifstream(run + "/demo_accuracy.json"));
  EXPECT_LT(report["accuracy_before"].get<double>(), 0.05);
  EXPECT_GT(report["accuracy_after"].get<double>(), 0.9);
  EXPECT_EQ(report["eval_examples"].get<int>(), 200);
  EXPECT_TRUE(fs::exists(run + "/adapter/adapter_config.json"));
  EXPECT_TRUE(fs::exists(run + "/adapter/adapter_model.safetensors"));

  double first_loss = -1, last_loss = -1, last_eval = -1;
  for (const auto& line : json_lines(run + "/metrics.jsonl")) {
    if (line.contains("loss")) {
      if (first_loss < 0) first_loss = line["loss"];
      last_loss = line["loss"];
      EXPECT_GT(line["peak_rss_mib"].get<double>(), 0);
      EXPECT_GT(line["tokens_per_s"].get<double>(), 0);
    }
    if (line.contains("eval_loss")) last_eval = line["eval_loss"];
  }
  EXPECT_LT(last_loss, first_loss / 10) << "loss did not fall: " << first_loss << " -> " << last_loss;

  // eval from the resolved recipe: the same data, adapter and numbers as the end of training.
  const auto eval = run_process({shardlora_binary(), "eval", run + "/recipe.yaml", "--accuracy", "--max-new-tokens", "12", "--json"});
  ASSERT_EQ(eval.exit_code, 0) << eval.err;
  const auto result = nlohmann::json::parse(eval.out);
  EXPECT_EQ(result["adapter"], run + "/adapter");
  EXPECT_NEAR(result["loss"].get<double>(), last_eval, 1e-9 * last_eval);
  EXPECT_DOUBLE_EQ(result["accuracy"].get<double>(), report["accuracy_after"].get<double>());

  const auto generated = run_process({shardlora_binary(), "generate", run + "/model", "--adapter", run + "/adapter", "--recipe",
                                      run + "/recipe.yaml", "--prompt", "qwerty"});
  ASSERT_EQ(generated.exit_code, 0) << generated.err;
  EXPECT_EQ(generated.out, "ytrewq\n");

  const auto plot = run_process({shardlora_binary(), "plot", run});
  ASSERT_EQ(plot.exit_code, 0) << plot.err;
  std::ifstream svg_file(run + "/plot.svg");
  const std::string svg((std::istreambuf_iterator<char>(svg_file)), std::istreambuf_iterator<char>());
  const size_t train_line = svg.find("<polyline data-series='train loss'");
  ASSERT_NE(train_line, std::string::npos);
  const size_t points_at = svg.find("points='", train_line) + 8;
  const std::string points = svg.substr(points_at, svg.find("'/>", points_at) - points_at);
  EXPECT_EQ(std::count(points.begin(), points.end(), ','), 15) << "one point per log interval (300 steps / 20)";
  size_t circles = 0;
  for (size_t at = svg.find("<circle"); at != std::string::npos; at = svg.find("<circle", at + 1)) ++circles;
  EXPECT_EQ(circles, 3u) << "one marker per evaluation";

  const auto again = run_process({shardlora_binary(), "train", "output.dir=" + run});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("continue it with --resume, start over with --overwrite"), std::string::npos) << again.err;
  EXPECT_TRUE(fs::exists(run + "/adapter/adapter_model.safetensors")) << "the refused run must leave the first one intact";
}

TEST_F(DemoCommand, PlotNamesABadMetricsLine) {
  fs::create_directories(path("run"));
  std::ofstream(path("run/metrics.jsonl")) << R"({"step": 1, "loss": 2.0})" << "\n" << "{not json\n";
  const auto plot = run_process({shardlora_binary(), "plot", path("run")});
  EXPECT_EQ(plot.exit_code, 1);
  EXPECT_NE(plot.err.find("metrics.jsonl:2: not JSON"), std::string::npos) << plot.err;
  const auto png = run_process({shardlora_binary(), "plot", path("run"), "--out", path("plot.png")});
  EXPECT_EQ(png.exit_code, 1);
  EXPECT_NE(png.err.find("only SVG is written"), std::string::npos) << png.err;
}
