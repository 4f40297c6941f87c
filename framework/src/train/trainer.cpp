#include "shardlora/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "shardlora/data/data_loader.h"
#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/io/staging_directory.h"
#include "shardlora/io/tensor_file.h"
#include "shardlora/kernels/check.h"
#include "shardlora/nn/hf_loader.h"
#include "shardlora/nn/peft_adapter.h"
#include "shardlora/optim/adamw.h"
#include "shardlora/train/from_recipe.h"
#include "shardlora/util/memory.h"

namespace shardlora::train {
namespace {

namespace fs = std::filesystem;

constexpr char kCheckpointPrefix[] = "checkpoint-";

std::string checkpoint_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "%s%06lld", kCheckpointPrefix, static_cast<long long>(step));
  return name;
}

}  // namespace

struct Trainer::State {
  Recipe recipe;
  std::string run_dir;
  std::unique_ptr<data::Tokenizer> tokenizer;
  std::unique_ptr<data::Dataset> dataset, val_dataset;
  std::vector<int64_t> train_indices, held_out_indices;
  data::ChatTemplate chat_template;
  std::unique_ptr<data::DataLoader> loader;
  nn::LlamaModel model{nullptr};
  std::unique_ptr<optim::AdamW> optimizer;
  int64_t accumulation = 1, total_steps = 0, step = 0;

  explicit State(const Recipe& r) : recipe(r) {}

  // data.train's samples, less the held-out data.val_fraction (computed once).
  void split_dataset() {
    data::split_indices(dataset->size(), recipe.get_float("data.val_fraction"), static_cast<uint64_t>(recipe.get_int("training.seed")),
                        &train_indices, &held_out_indices);
    SHARDLORA_CHECK(!train_indices.empty(), recipe.get_string("data.train"), ": no training samples left after the validation split");
  }

  // Mean loss over the validation data (data.val, else the held-out fraction).
  std::optional<LossResult> evaluate() {
    if (val_dataset) {
      std::vector<int64_t> all(static_cast<size_t>(val_dataset->size()));
      std::iota(all.begin(), all.end(), int64_t{0});
      return evaluate_loss(model, *val_dataset, all, *tokenizer, loader_options_from(recipe, &chat_template));
    }
    if (held_out_indices.empty()) return std::nullopt;
    return evaluate_loss(model, *dataset, held_out_indices, *tokenizer, loader_options_from(recipe, &chat_template));
  }

  void save_checkpoint() {
    const std::string final_dir = run_dir + "/" + checkpoint_name(step);
    io::StagingDirectory staging(final_dir, /*replace=*/true);
    nn::save_peft_adapter(model, staging.path("adapter"), recipe.get_string("model.path"));
    optimizer->save(staging.path("optimizer.safetensors"));
    auto generator = at::detail::getDefaultCPUGenerator();
    torch::Tensor rng;
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      rng = generator.get_state();
    }
    io::write_tensor_file(staging.path("rng.safetensors"), {{"cpu", rng}});
    const data::LoaderPosition position = loader->position();
    const nlohmann::json state = {{"step", step},
                                  {"total_steps", total_steps},
                                  {"data", {{"epoch", position.sampler.epoch}, {"offset", position.sampler.offset},
                                            {"examples", position.stats.examples}, {"truncated", position.stats.truncated},
                                            {"dropped", position.stats.dropped}, {"malformed", position.stats.malformed}}}};
    std::ofstream(staging.path("trainer_state.json")) << state.dump(2) << "\n";
    staging.commit();
    const auto all = checkpoints(run_dir);
    const auto keep = static_cast<size_t>(recipe.get_int("training.keep_last"));
    for (size_t i = 0; i + keep < all.size(); ++i) fs::remove_all(all[i]);
  }

  // output.dir/adapter: the trained adapter where users look for it.
  void save_final_adapter() {
    io::StagingDirectory staging(run_dir + "/adapter", /*replace=*/true);
    nn::save_peft_adapter(model, staging.dir(), recipe.get_string("model.path"));
    staging.commit();
  }

  void load_checkpoint(const fs::path& dir) {
    const std::string label = dir.string();
    const nlohmann::json state = io::read_json_file((dir / "trainer_state.json").string());
    nn::load_adapter_weights(model, nn::read_peft_adapter((dir / "adapter").string()), label);
    optimizer->load((dir / "optimizer.safetensors").string());
    const auto rng = io::read_tensor_file((dir / "rng.safetensors").string());
    SHARDLORA_CHECK(rng.count("cpu"), label, ": rng.safetensors has no 'cpu' state");
    auto generator = at::detail::getDefaultCPUGenerator();
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      generator.set_state(rng.at("cpu"));
    }
    const auto& position = state.at("data");
    loader->restore({{position.at("epoch").get<int64_t>(), position.at("offset").get<int64_t>()},
                     {position.at("examples").get<int64_t>(), position.at("truncated").get<int64_t>(),
                      position.at("dropped").get<int64_t>(), position.value("malformed", int64_t{0})}});
    step = state.at("step").get<int64_t>();
  }
};

std::vector<fs::path> checkpoints(const std::string& run_dir) {
  std::vector<fs::path> found;
  if (!fs::exists(run_dir)) return found;
  for (const auto& entry : fs::directory_iterator(run_dir)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && name.rfind(kCheckpointPrefix, 0) == 0 && name.find(".partial-") == std::string::npos && name.find(".old-") == std::string::npos) {
      found.push_back(entry.path());
    }
  }
  std::sort(found.begin(), found.end());
  return found;
}


void check_run_directory(const std::string& run_dir, StartMode mode) {
  const auto found = checkpoints(run_dir);
  SHARDLORA_CHECK(mode != StartMode::Resume || !found.empty(), run_dir, ": no checkpoint to resume from");
  SHARDLORA_CHECK(mode != StartMode::Fresh || found.empty(), run_dir, " holds a run (", found.empty() ? "" : found.back().filename().string(),
                  "): continue it with --resume, start over with --overwrite, or choose another output.dir");
}

Trainer::Trainer(const Recipe& recipe) : state_(std::make_unique<State>(recipe)) {
  State& s = *state_;
  recipe.require_paths({"model.path", "data.train", "data.val"});
  s.run_dir = recipe.get_string("output.dir");
  const std::string model_dir = recipe.get_string("model.path");
  s.tokenizer = data::load_tokenizer(model_dir);
  s.dataset = std::make_unique<data::Dataset>(dataset_options_from(recipe, recipe.get_string("data.train")));
  if (const std::string val = recipe.get_string("data.val"); !val.empty()) {
    s.val_dataset = std::make_unique<data::Dataset>(dataset_options_from(recipe, val));
  }
  s.chat_template = chat_template_from(recipe);
  s.split_dataset();
  const uint64_t seed = static_cast<uint64_t>(recipe.get_int("training.seed"));
  const data::LoaderOptions loader_options = loader_options_from(recipe, &s.chat_template);
  s.loader = std::make_unique<data::DataLoader>(*s.dataset, *s.tokenizer, s.train_indices, 1, 0, seed, loader_options);
  s.accumulation = recipe.get_int("training.gradient_accumulation_steps");

  s.total_steps = recipe.get_int("training.max_steps");
  if (s.total_steps == 0) {
    // Steps of the requested epochs: one pass over the data counts the batches of an epoch.
    data::DataLoader counter(*s.dataset, *s.tokenizer, s.train_indices, 1, 0, seed, loader_options);
    int64_t batches = 0;
    while (counter.epoch() == 0) {
      counter.next();
      ++batches;
    }
    s.total_steps = std::max<int64_t>(1, batches * recipe.get_int("training.epochs") / s.accumulation);
  }

  torch::manual_seed(seed);
  s.model = nn::load_hf_model(model_dir, model_options_from(recipe));
  s.optimizer = std::make_unique<optim::AdamW>(s.model->parameters(), adamw_options_from(recipe, s.total_steps));
}

Trainer::~Trainer() = default;

int64_t Trainer::total_steps() const { return state_->total_steps; }
nn::LlamaModel& Trainer::model() { return state_->model; }
const data::Tokenizer& Trainer::tokenizer() const { return *state_->tokenizer; }
const data::ChatTemplate& Trainer::chat_template() const { return state_->chat_template; }

TrainSummary Trainer::run(StartMode mode, const TrainHooks& hooks) {
  State& s = *state_;
  fs::create_directories(s.run_dir);
  check_run_directory(s.run_dir, mode);
  const auto found = checkpoints(s.run_dir);
  if (mode == StartMode::Resume) {
    s.load_checkpoint(found.back());
  } else {
    for (const auto& old : found) fs::remove_all(old);
    fs::remove_all(s.run_dir + "/adapter");
    io::write_file_atomically(s.run_dir + "/recipe.yaml", s.recipe.dump());
    std::ofstream(s.run_dir + "/metrics.jsonl", std::ios::trunc);
  }
  std::ofstream metrics(s.run_dir + "/metrics.jsonl", std::ios::app);
  SHARDLORA_CHECK(metrics, s.run_dir, "/metrics.jsonl: cannot open for writing");
  const auto log = [&](const nlohmann::json& line) {
    metrics << line.dump() << "\n";
    metrics.flush();
  };
  const int64_t log_every = s.recipe.get_int("training.log_every"), save_every = s.recipe.get_int("training.save_every");
  const int64_t eval_every = s.recipe.get_int("training.eval_every");
  TrainSummary summary;
  s.model->train();
  const auto start = std::chrono::steady_clock::now();
  const int64_t first_step = s.step;
  int64_t tokens_seen = 0;
  while (s.step < s.total_steps) {
    s.optimizer->zero_grad();
    torch::Tensor loss_sum = torch::zeros({}, torch::kFloat64);
    int64_t targets = 0;
    for (int64_t micro = 0; micro < s.accumulation; ++micro) {
      const data::Batch batch = s.loader->next();
      const torch::Tensor logits =
          s.model->forward(batch.input_ids, {.position_ids = batch.position_ids, .document_ids = batch.document_ids});
      auto [loss, count] = summed_loss(logits, batch);
      loss.backward();
      loss_sum += loss.detach().to(torch::kFloat64);
      targets += count;
      tokens_seen += batch.document_ids.ge(0).sum().item<int64_t>();
    }
    {
      torch::NoGradGuard no_grad;
      for (auto& parameter : s.model->parameters()) {
        if (parameter.grad().defined() && targets > 0) parameter.mutable_grad().div_(static_cast<double>(targets));
      }
    }
    const optim::StepReport report = s.optimizer->step();
    ++s.step;
    summary.last_loss = targets ? loss_sum.item<double>() / static_cast<double>(targets) : 0.0;

    StepProgress progress;
    progress.step = s.step;
    progress.total_steps = s.total_steps;
    progress.loss = summary.last_loss;
    progress.lr = report.lr;
    progress.grad_norm = report.grad_norm;
    progress.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress.tokens_per_second = static_cast<double>(tokens_seen) / std::max(progress.elapsed_s, 1e-9);
    progress.eta_s = progress.elapsed_s / static_cast<double>(s.step - first_step) * static_cast<double>(s.total_steps - s.step);
    progress.peak_rss_bytes = peak_rss_bytes();
    progress.logged = s.step % log_every == 0 || s.step == s.total_steps;
    if (progress.logged) {
      log({{"step", s.step},
           {"loss", progress.loss},
           {"lr", progress.lr},
           {"grad_norm", progress.grad_norm},
           {"targets", targets},
           {"applied", report.applied},
           {"epoch", s.loader->epoch()},
           {"elapsed_s", progress.elapsed_s},
           {"tokens_per_s", progress.tokens_per_second},
           {"peak_rss_mib", static_cast<double>(progress.peak_rss_bytes) / (1 << 20)}});
    }
    if (hooks.on_step) hooks.on_step(progress);
    if (eval_every > 0 && (s.step % eval_every == 0 || s.step == s.total_steps)) {
      if (const auto evaluation = s.evaluate()) {
        log({{"step", s.step}, {"eval_loss", evaluation->loss}, {"eval_perplexity", evaluation->perplexity()}, {"eval_tokens", evaluation->tokens}});
        if (hooks.on_eval) hooks.on_eval(s.step, *evaluation);
      }
    }
    const bool stopping = hooks.stop && hooks.stop(s.step);
    if ((save_every > 0 && s.step % save_every == 0) || s.step == s.total_steps || stopping) s.save_checkpoint();
    if (stopping) {
      summary.stopped_early = s.step < s.total_steps;
      break;
    }
  }
  if (s.step == s.total_steps) s.save_final_adapter();
  summary.steps = s.step;
  summary.steps_run = s.step - first_step;
  summary.data = s.loader->stats();
  return summary;
}

}  // namespace shardlora::train
