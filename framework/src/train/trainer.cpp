#include "shardlora/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "shardlora/data/data_loader.h"
#include "shardlora/data/tokenizer.h"
#include "shardlora/dist/gradient_buckets.h"
#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/io/run_lock.h"
#include "shardlora/io/staging_directory.h"
#include "shardlora/io/tensor_file.h"
#include "shardlora/io/tensorboard.h"
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

// A metrics line's numbers as TensorBoard scalars, under Hugging Face Trainer's sections:
// eval_loss as eval/loss, the others as train/NAME.
std::vector<std::pair<std::string, double>> tensorboard_scalars(const nlohmann::json& line) {
  std::vector<std::pair<std::string, double>> scalars;
  for (const auto& [key, value] : line.items()) {
    if (key == "step" || !value.is_number()) continue;
    const std::string tag = key.rfind("eval_", 0) == 0 ? "eval/" + key.substr(5) : "train/" + key;
    scalars.emplace_back(tag, value.get<double>());
  }
  return scalars;
}

// lora.init_from: the adapter's weights in place of the fresh ones, when its shape of LoRA is
// the recipe's (else an error naming the key); its modules and shapes are checked as loaded.
void start_from_adapter(nn::LlamaModel& model, const std::string& dir, const Recipe& recipe) {
  const nn::PeftAdapter adapter = nn::read_peft_adapter(dir);
  const std::string where = recipe.origin("lora.init_from") + ": key 'lora.init_from' (" + dir + ")";
  SHARDLORA_CHECK(adapter.lora.r == recipe.get_int("lora.r"), where, ": the adapter has r = ", adapter.lora.r, ", key 'lora.r' is ",
                  recipe.get_int("lora.r"));
  SHARDLORA_CHECK(adapter.lora.alpha == recipe.get_float("lora.alpha"), where, ": the adapter has lora_alpha = ", adapter.lora.alpha,
                  ", key 'lora.alpha' is ", recipe.get_float("lora.alpha"));
  SHARDLORA_CHECK(adapter.lora.use_rslora == recipe.get_bool("lora.rslora"), where, ": the adapter has use_rslora = ",
                  adapter.lora.use_rslora ? "true" : "false", ", key 'lora.rslora' is ", recipe.get_bool("lora.rslora") ? "true" : "false");
  SHARDLORA_CHECK(adapter.lora.use_dora == recipe.get_bool("lora.use_dora"), where, ": the adapter has use_dora = ",
                  adapter.lora.use_dora ? "true" : "false", ", key 'lora.use_dora' is ", recipe.get_bool("lora.use_dora") ? "true" : "false");
  try {
    nn::load_adapter_weights(model, adapter, dir);
  } catch (const Error& error) {
    throw Error(where + ": " + error.what() + " (key 'lora.target_modules', or an adapter of another base model)");
  }
}

// "cpu" or "cuda": a generator's key in rng.safetensors.
std::string generator_name(const at::Generator& generator) { return c10::DeviceTypeName(generator.device().type(), /*lower_case=*/true); }

// A rank's data position as a flat int64 row, so all ranks' rows can be gathered in one call.
constexpr int64_t kPositionFields = 7;

std::vector<int64_t> position_row(const data::LoaderPosition& p) {
  return {p.sampler.epoch, p.sampler.offset, p.sampler.base, p.stats.examples, p.stats.truncated, p.stats.dropped, p.stats.malformed};
}

nlohmann::json position_json(const std::vector<int64_t>& row) {
  return {{"epoch", row[0]}, {"offset", row[1]}, {"base", row[2]}, {"examples", row[3]},
          {"truncated", row[4]}, {"dropped", row[5]}, {"malformed", row[6]}};
}

data::LoaderPosition position_from_json(const nlohmann::json& j) {
  return {{j.at("epoch").get<int64_t>(), j.at("offset").get<int64_t>(), j.value("base", int64_t{0})},
          {j.at("examples").get<int64_t>(), j.at("truncated").get<int64_t>(), j.at("dropped").get<int64_t>(),
           j.value("malformed", int64_t{0})}};
}

// Where `world` ranks continue when the checkpoint's `saved` positions came from another world
// size: every rank starts at the first permutation entry not yet taken by all the old ranks
// (entries some old ranks took past it are read again); counters go to rank 0.
data::LoaderPosition regrouped_position(const std::vector<data::LoaderPosition>& saved, int rank, int64_t* repeated) {
  const int64_t old_world = static_cast<int64_t>(saved.size());
  int64_t epoch = INT64_MAX;
  for (const auto& p : saved) epoch = std::min(epoch, p.sampler.epoch);
  int64_t base = 0, least = INT64_MAX, taken = 0;
  for (const auto& p : saved) {
    if (p.sampler.epoch != epoch) continue;
    base = p.sampler.base;
    least = std::min(least, p.sampler.offset);
    taken += p.sampler.offset;
  }
  *repeated = taken - least * old_world;
  data::LoaderPosition position{{epoch, 0, base + least * old_world}, {}};
  if (rank == 0) {
    for (const auto& p : saved) {
      position.stats.examples += p.stats.examples;
      position.stats.truncated += p.stats.truncated;
      position.stats.dropped += p.stats.dropped;
      position.stats.malformed += p.stats.malformed;
    }
  }
  return position;
}

}  // namespace

struct Trainer::State {
  Recipe recipe;
  std::string run_dir;
  std::unique_ptr<io::RunDirectoryLock> lock;  // rank 0's, for the trainer's lifetime
  std::unique_ptr<data::Tokenizer> tokenizer;
  std::vector<int64_t> added_token_ids;  // data.add_special_tokens' ids
  std::unique_ptr<data::Dataset> dataset, val_dataset;
  std::vector<int64_t> train_indices, held_out_indices;
  data::ChatTemplate chat_template;
  std::unique_ptr<data::DataLoader> loader;
  nn::LlamaModel model{nullptr};
  std::unique_ptr<optim::AdamW> optimizer;
  int64_t accumulation = 1, total_steps = 0, step = 0;
  dist::Communicator* comm = nullptr;  // null: one rank
  int rank = 0, world = 1;
  torch::Device device;  // the model's, and the communicator's
  std::unique_ptr<dist::GradientBuckets> buckets;

  State(const Recipe& r, dist::Communicator* c, torch::Device d) : recipe(r), comm(c), device(d) {
    if (comm) {
      rank = comm->rank();
      world = comm->world_size();
    }
  }

  bool distributed() const { return world > 1; }

  // The adapter, and with data.add_special_tokens the tokenizer that knows them, in `dir`.
  void save_adapter(const std::string& dir) {
    nn::save_peft_adapter(model, dir, recipe.get_string("model.path"));
    if (!added_token_ids.empty()) {
      data::write_tokenizer_with_tokens(recipe.get_string("model.path"), recipe.get_strings("data.add_special_tokens"), dir,
                                        recipe.origin("data.add_special_tokens") + ": key 'data.add_special_tokens'");
    }
  }

  void barrier() {
    if (distributed()) comm->barrier();
  }

  // Element-wise reduction over ranks of a few CPU counters, on the CPU (identity on one
  // rank). They travel through the model's device: NCCL moves only GPU tensors.
  torch::Tensor reduce_over_ranks(const torch::Tensor& values, dist::ReduceOp op = dist::ReduceOp::Sum) {
    if (!distributed()) return values;
    torch::Tensor on_device = values.to(device, /*non_blocking=*/false, /*copy=*/true);
    comm->allreduce(on_device, op);
    return on_device.cpu();
  }

  // Every rank's row of the CPU tensor `row`, in rank order ([world, n], on the CPU).
  torch::Tensor gather_rows(const torch::Tensor& row) {
    if (!distributed()) return row.unsqueeze(0);
    auto all = torch::empty({world, row.numel()}, row.options().device(device));
    comm->allgather(row.to(device).contiguous(), all);
    return all.cpu();
  }

  // data.train's samples, less the held-out data.val_fraction (computed once).
  void split_dataset() {
    data::split_indices(dataset->size(), recipe.get_float("data.val_fraction"), static_cast<uint64_t>(recipe.get_int("training.seed")),
                        &train_indices, &held_out_indices);
    SHARDLORA_CHECK(!train_indices.empty(), recipe.get_string("data.train"), ": no training samples left after the validation split");
  }

  // Mean loss over the validation data (data.val, else the held-out fraction); ranks take
  // every world-th sample and sum their losses and token counts.
  std::optional<LossResult> evaluate() {
    std::vector<int64_t> all = held_out_indices;
    if (val_dataset) {
      all.resize(static_cast<size_t>(val_dataset->size()));
      std::iota(all.begin(), all.end(), int64_t{0});
    }
    if (all.empty()) return std::nullopt;
    std::vector<int64_t> mine;
    for (size_t i = static_cast<size_t>(rank); i < all.size(); i += static_cast<size_t>(world)) mine.push_back(all[i]);
    const auto batches = eval_batches(val_dataset ? *val_dataset : *dataset, mine, *tokenizer, loader_options_from(recipe, &chat_template));
    // A sharded base makes every forward collective: all ranks run as many as the busiest.
    int64_t passes = static_cast<int64_t>(batches.size());
    if (model->sharded_base()) passes = reduce_over_ranks(torch::tensor({passes}, torch::kInt64), dist::ReduceOp::Max).item<int64_t>();
    const auto result = evaluate_loss(model, batches, passes);
    if (!distributed()) return result;
    const double tokens = result ? static_cast<double>(result->tokens) : 0.0;
    const auto sums = reduce_over_ranks(torch::tensor({result ? result->loss * tokens : 0.0, tokens}, torch::kFloat64));
    if (sums[1].item<double>() == 0) return std::nullopt;
    return LossResult{sums[0].item<double>() / sums[1].item<double>(), static_cast<int64_t>(sums[1].item<double>())};
  }

  // Adapter and optimizer state are the same on every rank: rank 0 writes them, with every
  // rank's data position and RNG state (gathered first); the others wait at a barrier.
  void save_checkpoint() {
    const auto positions = gather_rows(torch::tensor(position_row(loader->position()), torch::kInt64));
    // Every rank's dropout streams, by name: "cpu", and "cuda" when training on a GPU.
    std::map<std::string, torch::Tensor> rng_file;
    for (at::Generator& generator : nn::dropout_generators(device)) {
      torch::Tensor state;
      {
        std::lock_guard<std::mutex> lock(generator.mutex());
        state = generator.get_state();
      }
      const std::string name = generator_name(generator);
      const auto rows = gather_rows(state);
      rng_file[name] = rows[0];
      for (int r = 1; r < world; ++r) rng_file[name + ".rank" + std::to_string(r)] = rows[r];
    }
    if (rank == 0) {
      const std::string final_dir = run_dir + "/" + checkpoint_name(step);
      io::StagingDirectory staging(final_dir, /*replace=*/true);
      save_adapter(staging.path("adapter"));
      optimizer->save(staging.path("optimizer.safetensors"));
      io::write_tensor_file(staging.path("rng.safetensors"), rng_file);
      nlohmann::json ranks = nlohmann::json::array();
      for (int r = 0; r < world; ++r) {
        const auto row = positions[r];
        ranks.push_back(position_json(std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + kPositionFields)));
      }
      const nlohmann::json state = {{"step", step}, {"total_steps", total_steps}, {"world_size", world}, {"data", ranks[0]}, {"ranks", ranks}};
      io::write_file_atomically(staging.path("trainer_state.json"), state.dump(2) + "\n");
      staging.commit();
      prune_checkpoints();
    }
    barrier();  // the checkpoint is complete before any rank goes on (or exits)
  }

  // Only once the newest checkpoint is durable: the oldest beyond training.keep_last go.
  void prune_checkpoints() {
    const auto all = checkpoints(run_dir);
    const auto keep = static_cast<size_t>(recipe.get_int("training.keep_last"));
    for (size_t i = 0; i + keep < all.size(); ++i) io::remove_directory_durably(all[i].string());
  }

  // output.dir/adapter: the trained adapter where users look for it.
  void save_final_adapter() {
    if (rank == 0) {
      io::StagingDirectory staging(run_dir + "/adapter", /*replace=*/true);
      save_adapter(staging.dir());
      staging.commit();
    }
    barrier();
  }

  void load_checkpoint(const fs::path& dir) {
    const std::string label = dir.string();
    const nlohmann::json state = io::read_json_file((dir / "trainer_state.json").string());
    nn::load_adapter_weights(model, nn::read_peft_adapter((dir / "adapter").string()), label);
    optimizer->load((dir / "optimizer.safetensors").string());
    std::vector<data::LoaderPosition> saved;
    int64_t saved_step = 0;
    try {
      if (state.contains("ranks")) {
        for (const auto& row : state.at("ranks")) saved.push_back(position_from_json(row));
      } else {
        saved.push_back(position_from_json(state.at("data")));  // written by a single-rank version
      }
      saved_step = state.at("step").get<int64_t>();
    } catch (const nlohmann::json::exception& error) {
      throw Error(label + "/trainer_state.json: a key is missing or of the wrong type (" + error.what() + ")");
    }
    SHARDLORA_CHECK(!saved.empty() && saved_step >= 0, label, "/trainer_state.json: no data position saved, or a negative step");
    const int saved_world = static_cast<int>(saved.size());
    const auto rng = io::read_tensor_file((dir / "rng.safetensors").string());
    for (at::Generator& generator : nn::dropout_generators(device)) {
      const std::string name = generator_name(generator);
      const std::string key = rank > 0 && rank < saved_world ? name + ".rank" + std::to_string(rank) : name;
      // A checkpoint written on the CPU has no GPU stream: that one starts from the seed.
      if (!rng.count(key) && name != "cpu") continue;
      SHARDLORA_CHECK(rng.count(key), label, ": rng.safetensors has no '", key, "' state");
      std::lock_guard<std::mutex> lock(generator.mutex());
      generator.set_state(rng.at(key));
    }
    if (saved_world == world) {
      loader->restore(saved[static_cast<size_t>(rank)]);
    } else {
      int64_t repeated = 0;
      loader->restore(regrouped_position(saved, rank, &repeated));
      if (rank == 0) {
        std::fprintf(stderr, "%s: written by %d ranks, resumed on %d: the data continues at sample %lld of epoch %lld (%lld samples read again)\n",
                     label.c_str(), saved_world, world, static_cast<long long>(loader->position().sampler.base),
                     static_cast<long long>(loader->position().sampler.epoch), static_cast<long long>(repeated));
      }
    }
    step = saved_step;
  }
};

std::vector<fs::path> checkpoints(const std::string& run_dir) {
  std::vector<fs::path> found;
  if (!fs::exists(run_dir)) return found;
  for (const auto& entry : fs::directory_iterator(run_dir)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && name.rfind(kCheckpointPrefix, 0) == 0 && name.find(io::kPartialSuffix) == std::string::npos &&
        name.find(io::kRemovingSuffix) == std::string::npos) {
      found.push_back(entry.path());
    }
  }
  std::sort(found.begin(), found.end());
  return found;
}


namespace {

// check_run_directory less the lock, which this process's trainer may hold itself.
void check_run_contents(const std::string& run_dir, StartMode mode) {
  const auto found = checkpoints(run_dir);
  SHARDLORA_CHECK(mode != StartMode::Resume || !found.empty(), run_dir, ": no checkpoint to resume from");
  const bool finished = fs::exists(run_dir + "/adapter/" + nn::kAdapterConfigFile);
  SHARDLORA_CHECK(mode != StartMode::Fresh || (found.empty() && !finished), run_dir, " holds a run (",
                  found.empty() ? "its final adapter/" : found.back().filename().string(),
                  "): continue it with --resume, start over with --overwrite, or choose another output.dir");
}

}  // namespace

void check_run_directory(const std::string& run_dir, StartMode mode) {
  io::RunDirectoryLock::check_free(run_dir);
  check_run_contents(run_dir, mode);
}

Trainer::Trainer(const Recipe& recipe, dist::Communicator* comm, torch::Device device)
    : state_(std::make_unique<State>(recipe, comm, device)) {
  State& s = *state_;
  recipe.require_paths({"model.path", "data.train", "data.val", "lora.init_from"});
  s.run_dir = recipe.get_string("output.dir");
  // Before any slow work, so a second run into this directory fails at once.
  if (s.rank == 0) s.lock = std::make_unique<io::RunDirectoryLock>(s.run_dir);
  const std::string model_dir = recipe.get_string("model.path");
  if (const auto tokens = recipe.get_strings("data.add_special_tokens"); !tokens.empty()) {
    s.tokenizer = data::load_tokenizer_with_tokens(model_dir, tokens, recipe.origin("data.add_special_tokens") +
                                                                          ": key 'data.add_special_tokens'");
    for (const std::string& token : tokens) s.added_token_ids.push_back(*s.tokenizer->token_id(token));
  } else {
    s.tokenizer = data::load_tokenizer(model_dir);
  }
  s.dataset = std::make_unique<data::Dataset>(dataset_options_from(recipe, recipe.get_string("data.train")));
  if (const std::string val = recipe.get_string("data.val"); !val.empty()) {
    s.val_dataset = std::make_unique<data::Dataset>(dataset_options_from(recipe, val));
  }
  s.chat_template = chat_template_from(recipe, model_dir, *s.tokenizer);
  s.split_dataset();
  const uint64_t seed = static_cast<uint64_t>(recipe.get_int("training.seed"));
  const data::LoaderOptions loader_options = loader_options_from(recipe, &s.chat_template);
  s.loader = std::make_unique<data::DataLoader>(*s.dataset, *s.tokenizer, s.train_indices, s.world, s.rank, seed, loader_options);
  s.accumulation = recipe.get_int("training.gradient_accumulation_steps");

  s.total_steps = recipe.get_int("training.max_steps");
  // A pass over this rank's shard (to its first target, or through the epoch when the steps
  // come from epochs): data with nothing to learn from fails here, before any step.
  data::DataLoader counter(*s.dataset, *s.tokenizer, s.train_indices, s.world, s.rank, seed, loader_options);
  int64_t batches = 0, targets = 0;
  while (counter.epoch() == 0 && (s.total_steps == 0 || targets == 0)) {
    targets += target_mask(counter.next()).sum().item<int64_t>();
    ++batches;
  }
  const auto scan = s.reduce_over_ranks(torch::tensor({-batches, targets}, torch::kInt64), dist::ReduceOp::Max);
  SHARDLORA_CHECK(scan[1].item<int64_t>() > 0, recipe.get_string("data.train"),
                  ": no example has a token to train on: every label is masked (-100, or only prompts with "
                  "data.train_on_prompt off) or every example was truncated or dropped (data.max_seq_len ",
                  recipe.get_int("data.max_seq_len"), "); ", data::describe(counter.position().stats));
  if (s.total_steps == 0) {
    // Steps of the requested epochs; ranks agree on the smallest count (shards differ by at
    // most one sample).
    s.total_steps = std::max<int64_t>(1, -scan[0].item<int64_t>() * recipe.get_int("training.epochs") / s.accumulation);
  }

  torch::manual_seed(seed);
  nn::ModelOptions model_options = model_options_from(recipe);
  model_options.device = device;
  if (s.distributed() && recipe.get_string("distributed.strategy") == "shard") model_options.shard_over = comm;
  if (!s.added_token_ids.empty()) {
    model_options.trainable_tokens = s.added_token_ids;
    model_options.vocab_size = s.tokenizer->vocab_size();
  }
  s.model = nn::load_hf_model(model_dir, model_options);
  if (const std::string from = recipe.get_string("lora.init_from"); !from.empty()) start_from_adapter(s.model, from, recipe);
  if (s.distributed()) {
    // One starting point for every rank, whatever each rank's RNG did while loading.
    torch::NoGradGuard no_grad;
    for (auto& parameter : s.model->parameters()) {
      comm->broadcast(parameter.data(), 0);
      parameter.unsafeGetTensorImpl()->bump_version();  // written through a raw pointer
    }
    s.buckets = std::make_unique<dist::GradientBuckets>(s.model->parameters(), recipe.get_int("distributed.bucket_mb") << 20, *comm);
  }
  s.optimizer = std::make_unique<optim::AdamW>(s.model->parameters(), adamw_options_from(recipe, s.total_steps, s.model));
}

Trainer::~Trainer() = default;

int64_t Trainer::total_steps() const { return state_->total_steps; }
nn::LlamaModel& Trainer::model() { return state_->model; }
const data::Tokenizer& Trainer::tokenizer() const { return *state_->tokenizer; }
const data::ChatTemplate& Trainer::chat_template() const { return state_->chat_template; }

TrainSummary Trainer::run(StartMode mode, const TrainHooks& hooks) {
  State& s = *state_;
  // Every rank checks the directory before rank 0 changes it.
  check_run_contents(s.run_dir, mode);
  const auto found = checkpoints(s.run_dir);
  s.barrier();
  // Under the lock nothing else writes here: partial files are a killed writer's leftovers.
  if (s.rank == 0) io::remove_stale_partials(s.run_dir);
  if (mode == StartMode::Resume) {
    s.load_checkpoint(found.back());
    if (s.rank == 0) s.prune_checkpoints();  // a kill may have come between a checkpoint and its pruning
  } else if (s.rank == 0) {
    for (const auto& old : found) io::remove_directory_durably(old.string());
    io::remove_directory_durably(s.run_dir + "/adapter");
    io::write_file_atomically(s.run_dir + "/recipe.yaml", s.recipe.dump());
    io::write_file_atomically(s.run_dir + "/metrics.jsonl", "");
    for (const auto& entry : fs::directory_iterator(s.run_dir)) {
      if (entry.path().filename().string().rfind("events.out.tfevents.", 0) == 0) fs::remove(entry.path());
    }
  }
  std::unique_ptr<io::AppendFile> metrics;
  std::unique_ptr<io::TensorBoardWriter> tensorboard;
  if (s.rank == 0) {  // one writer: metrics are reduced first
    metrics = std::make_unique<io::AppendFile>(s.run_dir + "/metrics.jsonl");
    if (s.recipe.get_bool("output.tensorboard")) tensorboard = std::make_unique<io::TensorBoardWriter>(s.run_dir);
  }
  const auto log = [&](const nlohmann::json& line) {
    if (metrics) metrics->append(line.dump() + "\n");
    if (tensorboard) tensorboard->add_scalars(line["step"].get<int64_t>(), tensorboard_scalars(line));
  };
  const int64_t log_every = s.recipe.get_int("training.log_every"), save_every = s.recipe.get_int("training.save_every");
  const int64_t eval_every = s.recipe.get_int("training.eval_every");
  TrainSummary summary;
  s.model->train();
  const auto start = std::chrono::steady_clock::now();
  const int64_t first_step = s.step;
  const dist::Traffic traffic_at_start = s.distributed() ? s.comm->traffic() : dist::Traffic{};
  double tokens_seen = 0;
  while (s.step < s.total_steps) {
    s.optimizer->zero_grad();
    // Loss and target count stay on the device until the step's one read (no host sync per
    // micro-batch); the token count comes from the batch, on the host.
    torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions(torch::kFloat64).device(s.device));
    torch::Tensor local_targets = torch::zeros({}, loss_sum.options().dtype(torch::kInt64));
    int64_t local_tokens = 0;
    for (int64_t micro = 0; micro < s.accumulation; ++micro) {
      const data::Batch batch = s.loader->next();
      const nn::SummedLoss loss = summed_loss(s.model, batch);
      if (s.buckets && micro + 1 == s.accumulation) s.buckets->arm();  // the last backward all-reduces as it goes
      loss.sum.backward();
      loss_sum += loss.sum.detach().to(torch::kFloat64);
      local_targets += loss.count;
      local_tokens += batch.document_ids.ge(0).sum().item<int64_t>();
    }
    // Loss, targets, tokens and the stop request, summed over ranks in one call: every rank
    // then divides by the same target count and stops at the same step.
    const bool stop_here = hooks.stop && hooks.stop(s.step + 1);
    const auto totals = s.reduce_over_ranks(torch::cat({torch::stack({loss_sum, local_targets.to(torch::kFloat64)}).cpu(),
                                                        torch::tensor({static_cast<double>(local_tokens), stop_here ? 1.0 : 0.0},
                                                                      torch::kFloat64)}));
    if (s.buckets) s.buckets->finish();
    const auto targets = static_cast<int64_t>(totals[1].item<double>());
    tokens_seen += totals[2].item<double>();
    const bool stopping = totals[3].item<double>() > 0;
    {
      torch::NoGradGuard no_grad;
      for (auto& parameter : s.model->parameters()) {
        if (parameter.grad().defined() && targets > 0) parameter.mutable_grad().div_(static_cast<double>(targets));
      }
    }
    const optim::StepReport report = s.optimizer->step();
    ++s.step;
    summary.last_loss = targets ? totals[0].item<double>() / static_cast<double>(targets) : 0.0;

    StepProgress progress;
    progress.step = s.step;
    progress.total_steps = s.total_steps;
    progress.loss = summary.last_loss;
    progress.lr = report.lr;
    progress.grad_norm = report.grad_norm;
    progress.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress.tokens_per_second = tokens_seen / std::max(progress.elapsed_s, 1e-9);
    progress.eta_s = progress.elapsed_s / static_cast<double>(s.step - first_step) * static_cast<double>(s.total_steps - s.step);
    progress.peak_rss_bytes = peak_rss_bytes();
    progress.logged = s.step % log_every == 0 || s.step == s.total_steps;
    if (progress.logged) {
      nlohmann::json line = {{"step", s.step},
                             {"loss", progress.loss},
                             {"lr", progress.lr},
                             {"grad_norm", progress.grad_norm},
                             {"targets", targets},
                             {"applied", report.applied},
                             {"epoch", s.loader->epoch()},
                             {"elapsed_s", progress.elapsed_s},
                             {"tokens_per_s", progress.tokens_per_second},
                             {"peak_rss_mib", static_cast<double>(progress.peak_rss_bytes) / (1 << 20)},
                             {"world_size", s.world}};
      if (s.distributed()) {
        // Bytes by collective kind since this run started (nccl-tests' message sizes, this
        // rank's view; loading's collectives left out).
        nlohmann::json comm;
        for (size_t kind = 0; kind < dist::kCollectiveKinds; ++kind) {
          comm[std::string(dist::collective_name(static_cast<dist::Collective>(kind))) + "_bytes"] =
              s.comm->traffic().bytes[kind] - traffic_at_start.bytes[kind];
        }
        comm["gradient_bytes"] = s.buckets->bytes_reduced();
        comm["backend"] = s.comm->backend_name();
        line["comm"] = comm;
      }
      log(line);
    }
    if (hooks.on_step && s.rank == 0) hooks.on_step(progress);
    if (eval_every > 0 && (s.step % eval_every == 0 || s.step == s.total_steps)) {
      if (const auto evaluation = s.evaluate()) {
        log({{"step", s.step}, {"eval_loss", evaluation->loss}, {"eval_perplexity", evaluation->perplexity()}, {"eval_tokens", evaluation->tokens}});
        if (hooks.on_eval && s.rank == 0) hooks.on_eval(s.step, *evaluation);
      }
    }
    if ((save_every > 0 && s.step % save_every == 0) || s.step == s.total_steps || stopping) s.save_checkpoint();
    if (stopping) {
      summary.stopped_early = s.step < s.total_steps;
      break;
    }
  }
  if (s.step == s.total_steps) s.save_final_adapter();
  summary.steps = s.step;
  summary.steps_run = s.step - first_step;
  const auto stats = s.reduce_over_ranks(torch::tensor(position_row(s.loader->position()), torch::kInt64).slice(0, 3).clone());
  summary.data = {stats[0].item<int64_t>(), stats[1].item<int64_t>(), stats[2].item<int64_t>(), stats[3].item<int64_t>()};
  return summary;
}

}  // namespace shardlora::train
