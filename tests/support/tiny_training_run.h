// A fixture for trainer tests: a tiny random Llama, a 24-line text dataset, a recipe for a
// 6-step run (fp32, LoRA r 4 with dropout, checkpoints every 2 steps) in a fresh directory,
// and the metrics a run logged.
#pragma once

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "shardlora/nn/random_model.h"
#include "shardlora/train/recipe.h"
#include "temp_dir.h"

namespace shardlora::testing {

class TinyTrainingRun : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    nn::write_random_hf_model(path("model"), {});
    std::ofstream data(path("train.jsonl"));
    for (int i = 0; i < 24; ++i) data << R"({"text": "the cat sat on the mat )" << i % 5 << R"("})" << "\n";
  }

  train::Recipe recipe(const std::string& run, std::vector<std::string> extra = {}) {
    std::vector<std::string> overrides = {"model.path=" + path("model"), "data.train=" + path("train.jsonl"),
                                          "data.format=text", "data.max_seq_len=64", "model.dtype=fp32",
                                          "lora.r=4", "lora.dropout=0.1", "optimizer.lr=1e-2", "training.max_steps=6",
                                          "training.save_every=2", "training.keep_last=2", "training.log_every=1",
                                          "training.micro_batch_size=2", "training.gradient_accumulation_steps=2",
                                          "output.dir=" + path(run)};
    overrides.insert(overrides.end(), extra.begin(), extra.end());
    return train::Recipe::parse("", "test", overrides);
  }

  // The values of `key` in the run's metrics.jsonl, in order.
  std::vector<double> losses(const std::string& run, const std::string& key = "loss") {
    std::vector<double> values;
    std::ifstream in(path(run + "/metrics.jsonl"));
    for (std::string line; std::getline(in, line);) {
      const auto json = nlohmann::json::parse(line);
      if (json.contains(key)) values.push_back(json[key].get<double>());
    }
    return values;
  }
};

}  // namespace shardlora::testing
