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

namespace shardlora::train {
namespace {

namespace fs = std::filesystem;

constexpr char kCheckpointPrefix[] = "checkpoint-";

std::string checkpoint_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "%s%06lld", kCheckpointPrefix, static_cast<long long>(step));
  return name;
}

// checkpoint-NNNNNN directories of the run, oldest first.
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

data::DatasetFormat format_of(const Recipe& recipe) { return data::dataset_format_from_name(recipe.get_string("data.format")); }

data::FieldMap fields_of(const Recipe& recipe) {
  data::FieldMap f;
  f.instruction = recipe.get_string("data.fields.instruction");
  f.input = recipe.get_string("data.fields.input");
  f.output = recipe.get_string("data.fields.output");
  f.messages = recipe.get_string("data.fields.messages");
  f.role = recipe.get_string("data.fields.role");
  f.content = recipe.get_string("data.fields.content");
  f.text = recipe.get_string("data.fields.text");
  f.input_ids = recipe.get_string("data.fields.input_ids");
  f.labels = recipe.get_string("data.fields.labels");
  return f;
}

// Loss summed over the step's targets, and their count: the target of position t is the
// label at t + 1, taken when it is not -100 and t + 1 is in t's document.
std::pair<torch::Tensor, int64_t> summed_loss(const torch::Tensor& logits, const data::Batch& batch) {
  const int64_t length = batch.input_ids.size(1);
  const torch::Tensor targets = batch.labels.narrow(1, 1, length - 1);
  const torch::Tensor same_document = batch.document_ids.narrow(1, 1, length - 1).eq(batch.document_ids.narrow(1, 0, length - 1));
  const torch::Tensor mask = targets.ne(data::kIgnoreIndex).logical_and(same_document);
  const torch::Tensor predictions = logits.narrow(1, 0, length - 1).reshape({-1, logits.size(-1)});
  const torch::Tensor losses = torch::nn::functional::cross_entropy(
      predictions, targets.masked_fill(mask.logical_not(), 0).reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  return {(losses * mask.reshape({-1}).to(losses.scalar_type())).sum(), mask.sum().item<int64_t>()};
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

  data::LoaderOptions loader_options() const {
    data::LoaderOptions options;
    options.micro_batch_size = recipe.get_int("training.micro_batch_size");
    options.max_seq_len = recipe.get_int("data.max_seq_len");
    options.packing = recipe.get_bool("data.packing");
    options.over_length = recipe.get_string("data.over_length") == "drop" ? data::OverLength::Drop : data::OverLength::Truncate;
    options.prompt = {&chat_template, recipe.get_bool("data.train_on_prompt")};
    return options;
  }

  // data.train's samples, less the held-out data.val_fraction (computed once).
  void split_dataset() {
    data::split_indices(dataset->size(), recipe.get_float("data.val_fraction"), static_cast<uint64_t>(recipe.get_int("training.seed")),
                        &train_indices, &held_out_indices);
    SHARDLORA_CHECK(!train_indices.empty(), recipe.get_string("data.train"), ": no training samples left after the validation split");
  }

  // Mean loss over every validation target (data.val, else the held-out fraction), in eval
  // mode (no dropout, so the RNG is untouched); nullopt when there is no validation data.
  std::optional<std::pair<double, int64_t>> evaluate() {
    const data::Dataset& source = val_dataset ? *val_dataset : *dataset;
    std::vector<int64_t> indices = held_out_indices;
    if (val_dataset) {
      indices.resize(static_cast<size_t>(val_dataset->size()));
      std::iota(indices.begin(), indices.end(), int64_t{0});
    }
    if (indices.empty()) return std::nullopt;
    const data::LoaderOptions options = loader_options();
    torch::NoGradGuard no_grad;
    model->eval();
    double loss = 0;
    int64_t tokens = 0;
    std::vector<data::Example> rows;
    const auto flush = [&] {
      if (rows.empty()) return;
      const data::Batch batch = data::pad_batch(rows, tokenizer->special().pad.value_or(0));
      const auto [sum, count] =
          summed_loss(model->forward(batch.input_ids, {.position_ids = batch.position_ids, .document_ids = batch.document_ids}), batch);
      loss += sum.item<double>();
      tokens += count;
      rows.clear();
    };
    for (const int64_t index : indices) {
      data::Example example = source.example(index, *tokenizer, options.prompt);
      if (!data::fit_to_length(&example, options.max_seq_len, options.over_length)) continue;
      rows.push_back(std::move(example));
      if (static_cast<int64_t>(rows.size()) == options.micro_batch_size) flush();
    }
    flush();
    model->train();
    if (tokens == 0) return std::nullopt;
    return std::make_pair(loss / static_cast<double>(tokens), tokens);
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
                                            {"dropped", position.stats.dropped}}}};
    std::ofstream(staging.path("trainer_state.json")) << state.dump(2) << "\n";
    staging.commit();
    const auto all = checkpoints(run_dir);
    const auto keep = static_cast<size_t>(recipe.get_int("training.keep_last"));
    for (size_t i = 0; i + keep < all.size(); ++i) fs::remove_all(all[i]);
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
                      position.at("dropped").get<int64_t>()}});
    step = state.at("step").get<int64_t>();
  }
};

Trainer::Trainer(const Recipe& recipe) : state_(std::make_unique<State>(recipe)) {
  State& s = *state_;
  s.run_dir = recipe.get_string("output.dir");
  const std::string model_dir = recipe.get_string("model.path");
  s.tokenizer = data::load_tokenizer(model_dir);
  data::DatasetOptions data_options{recipe.get_string("data.train"), format_of(recipe), fields_of(recipe), ""};
  s.dataset = std::make_unique<data::Dataset>(data_options);
  if (const std::string val = recipe.get_string("data.val"); !val.empty()) {
    s.val_dataset = std::make_unique<data::Dataset>(data::DatasetOptions{val, format_of(recipe), fields_of(recipe), ""});
  }
  s.chat_template = data::builtin_chat_template(recipe.get_string("data.template"));
  s.split_dataset();
  const uint64_t seed = static_cast<uint64_t>(recipe.get_int("training.seed"));
  s.loader = std::make_unique<data::DataLoader>(*s.dataset, *s.tokenizer, s.train_indices, 1, 0, seed, s.loader_options());
  s.accumulation = recipe.get_int("training.gradient_accumulation_steps");

  s.total_steps = recipe.get_int("training.max_steps");
  if (s.total_steps == 0) {
    // Steps of the requested epochs: one pass over the data counts the batches of an epoch.
    data::DataLoader counter(*s.dataset, *s.tokenizer, s.train_indices, 1, 0, seed, s.loader_options());
    int64_t batches = 0;
    while (counter.epoch() == 0) {
      counter.next();
      ++batches;
    }
    s.total_steps = std::max<int64_t>(1, batches * recipe.get_int("training.epochs") / s.accumulation);
  }

  torch::manual_seed(seed);
  nn::ModelOptions options;
  options.compute_dtype = recipe.get_string("model.dtype") == "fp32" ? torch::kFloat32 : torch::kBFloat16;
  const std::string quant_type = recipe.get_string("model.quantization.type");
  options.quantize_base = quant_type != "none";
  options.quant.type = quant_type == "fp4" ? kernels::QuantType::FP4 : kernels::QuantType::NF4;
  options.quant.blocksize = std::stoll(recipe.get_string("model.quantization.blocksize"));
  options.quant.double_quant = recipe.get_bool("model.quantization.double_quant");
  options.lora = {.r = recipe.get_int("lora.r"), .alpha = recipe.get_float("lora.alpha"),
                  .dropout = recipe.get_float("lora.dropout"), .use_rslora = recipe.get_bool("lora.rslora")};
  options.target_modules = recipe.get_strings("lora.target_modules");
  options.activation_checkpointing = recipe.get_bool("training.activation_checkpointing");
  s.model = nn::load_hf_model(model_dir, options);

  optim::AdamWOptions adamw;
  adamw.lr = recipe.get_float("optimizer.lr");
  const auto betas = recipe.get_floats("optimizer.betas");
  adamw.beta1 = betas[0];
  adamw.beta2 = betas[1];
  adamw.eps = recipe.get_float("optimizer.eps");
  adamw.weight_decay = recipe.get_float("optimizer.weight_decay");
  adamw.state_bits = recipe.get_string("optimizer.name") == "paged_adamw_8bit" ? 8 : 32;
  adamw.placement = *optim::placement_from_name(recipe.get_string("optimizer.placement"));
  adamw.staging_pages = recipe.get_int("optimizer.gpu_pages");
  adamw.max_grad_norm = recipe.get_float("training.grad_clip");
  adamw.schedule = {*optim::schedule_type_from_name(recipe.get_string("schedule.type")), recipe.get_int("schedule.warmup_steps"),
                    s.total_steps};
  s.optimizer = std::make_unique<optim::AdamW>(s.model->parameters(), adamw);
}

Trainer::~Trainer() = default;

int64_t Trainer::total_steps() const { return state_->total_steps; }

TrainSummary Trainer::run(bool resume, const std::function<bool(int64_t)>& stop) {
  State& s = *state_;
  fs::create_directories(s.run_dir);
  if (resume) {
    const auto found = checkpoints(s.run_dir);
    SHARDLORA_CHECK(!found.empty(), s.run_dir, ": no checkpoint to resume from");
    s.load_checkpoint(found.back());
  } else {
    std::ofstream(s.run_dir + "/recipe.yaml") << s.recipe.dump();
    std::ofstream(s.run_dir + "/metrics.jsonl", std::ios::trunc);
  }
  std::ofstream metrics(s.run_dir + "/metrics.jsonl", std::ios::app);
  const int64_t log_every = s.recipe.get_int("training.log_every"), save_every = s.recipe.get_int("training.save_every");
  const int64_t eval_every = s.recipe.get_int("training.eval_every");
  TrainSummary summary;
  s.model->train();
  const auto start = std::chrono::steady_clock::now();
  while (s.step < s.total_steps) {
    s.optimizer->zero_grad();
    torch::Tensor loss_sum = torch::zeros({}, torch::kFloat64);
    int64_t tokens = 0;
    for (int64_t micro = 0; micro < s.accumulation; ++micro) {
      const data::Batch batch = s.loader->next();
      const torch::Tensor logits =
          s.model->forward(batch.input_ids, {.position_ids = batch.position_ids, .document_ids = batch.document_ids});
      auto [loss, count] = summed_loss(logits, batch);
      loss.backward();
      loss_sum += loss.detach().to(torch::kFloat64);
      tokens += count;
    }
    {
      torch::NoGradGuard no_grad;
      for (auto& parameter : s.model->parameters()) {
        if (parameter.grad().defined() && tokens > 0) parameter.mutable_grad().div_(static_cast<double>(tokens));
      }
    }
    const optim::StepReport report = s.optimizer->step();
    ++s.step;
    summary.last_loss = tokens ? loss_sum.item<double>() / static_cast<double>(tokens) : 0.0;
    if (s.step % log_every == 0 || s.step == s.total_steps) {
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      metrics << nlohmann::json{{"step", s.step},         {"loss", summary.last_loss}, {"lr", report.lr},
                                {"grad_norm", report.grad_norm}, {"tokens", tokens}, {"applied", report.applied},
                                {"epoch", s.loader->epoch()}, {"elapsed_s", seconds}}
                     .dump()
              << "\n";
      metrics.flush();
    }
    if (eval_every > 0 && (s.step % eval_every == 0 || s.step == s.total_steps)) {
      if (const auto evaluation = s.evaluate()) {
        metrics << nlohmann::json{{"step", s.step}, {"eval_loss", evaluation->first},
                                  {"eval_perplexity", std::exp(evaluation->first)}, {"eval_tokens", evaluation->second}}
                       .dump()
                << "\n";
        metrics.flush();
      }
    }
    const bool stopping = stop && stop(s.step);
    if ((save_every > 0 && s.step % save_every == 0) || s.step == s.total_steps || stopping) s.save_checkpoint();
    if (stopping) {
      summary.stopped_early = s.step < s.total_steps;
      break;
    }
  }
  summary.steps = s.step;
  return summary;
}

}  // namespace shardlora::train
