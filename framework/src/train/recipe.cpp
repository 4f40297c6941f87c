#include "shardlora/train/recipe.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "shardlora/kernels/check.h"

namespace shardlora::train {
namespace {

KeySpec integer(std::string name, std::string fallback, double min, double max, std::string help) {
  return {std::move(name), KeyType::Int, std::move(fallback), false, min, max, {}, 0, std::move(help)};
}
KeySpec number(std::string name, std::string fallback, double min, double max, std::string help) {
  return {std::move(name), KeyType::Float, std::move(fallback), false, min, max, {}, 0, std::move(help)};
}
KeySpec flag(std::string name, std::string fallback, std::string help) {
  return {std::move(name), KeyType::Bool, std::move(fallback), false, 0, 0, {}, 0, std::move(help)};
}
KeySpec text(std::string name, std::string fallback, std::string help) {
  return {std::move(name), KeyType::String, std::move(fallback), false, 0, 0, {}, 0, std::move(help)};
}
KeySpec required_text(std::string name, std::string help) {
  return {std::move(name), KeyType::String, "", true, 0, 0, {}, 0, std::move(help)};
}
KeySpec choice(std::string name, std::string fallback, std::vector<std::string> choices, std::string help) {
  return {std::move(name), KeyType::Choice, std::move(fallback), false, 0, 0, std::move(choices), 0, std::move(help)};
}
KeySpec text_list(std::string name, std::string fallback, std::string help) {
  return {std::move(name), KeyType::StringList, std::move(fallback), false, 0, 0, {}, 0, std::move(help)};
}

const char* type_name(const KeySpec& spec) {
  switch (spec.type) {
    case KeyType::Int: return "integer";
    case KeyType::Float: return "number";
    case KeyType::Bool: return "true/false";
    case KeyType::String: return "string";
    case KeyType::Choice: return "choice";
    case KeyType::StringList: return "list of strings";
    case KeyType::FloatList: return "list of numbers";
  }
  return "?";
}

const KeySpec* find_spec(const std::string& name) {
  const auto& schema = recipe_schema();
  const auto it = std::find_if(schema.begin(), schema.end(), [&](const KeySpec& spec) { return spec.name == name; });
  return it == schema.end() ? nullptr : &*it;
}

bool is_section(const std::string& prefix) {
  for (const KeySpec& spec : recipe_schema()) {
    if (spec.name.rfind(prefix + ".", 0) == 0) return true;
  }
  return false;
}

std::string range_text(const KeySpec& spec) {
  std::ostringstream text;
  text << "[" << spec.min << ", " << spec.max << "]";
  return text.str();
}

// What a value of `spec` must be, for errors.
std::string expected_text(const KeySpec& spec) {
  const std::string range = spec.min < spec.max ? " in " + range_text(spec) : "";
  switch (spec.type) {
    case KeyType::Int: return "an integer" + range;
    case KeyType::Float: return "a number" + range;
    case KeyType::Bool: return "true or false";
    case KeyType::String: return "a string";
    case KeyType::Choice: {
      std::string options;
      for (const auto& c : spec.choices) options += (options.empty() ? "" : " | ") + c;
      return "one of " + options;
    }
    case KeyType::StringList: return spec.default_value == "[]" ? "a list of strings" : "a non-empty list of strings";  // [] by default: may stay empty
    case KeyType::FloatList: return "a list of " + std::to_string(spec.list_size) + " numbers" + range;
  }
  return "?";
}

// Checks `node` against `spec` and returns its canonical YAML; errors name `where` and the key.
std::string validate(const KeySpec& spec, const YAML::Node& node, const std::string& where) {
  const auto fail = [&](const std::string& expected) -> std::string {
    std::ostringstream found;
    found << node;
    throw Error(where + ": key '" + spec.name + "' must be " + expected + ", found '" + found.str() + "'");
  };
  const auto in_range = [&](double value) { return spec.min >= spec.max || (value >= spec.min && value <= spec.max); };
  YAML::Emitter out;
  out << YAML::Flow;
  try {
    switch (spec.type) {
      case KeyType::Int: {
        if (!node.IsScalar()) fail(expected_text(spec));
        const auto value = node.as<int64_t>();
        if (!in_range(static_cast<double>(value))) fail(expected_text(spec));
        out << value;
        break;
      }
      case KeyType::Float: {
        if (!node.IsScalar()) fail(expected_text(spec));
        const auto value = node.as<double>();
        if (!std::isfinite(value) || !in_range(value)) fail(expected_text(spec));
        out << value;
        break;
      }
      case KeyType::Bool:
        if (!node.IsScalar()) fail(expected_text(spec));
        out << node.as<bool>();
        break;
      case KeyType::String:
        if (!node.IsScalar()) fail(expected_text(spec));
        out << node.as<std::string>();
        break;
      case KeyType::Choice: {
        const std::string value = node.IsScalar() ? node.as<std::string>() : "";
        if (std::find(spec.choices.begin(), spec.choices.end(), value) == spec.choices.end()) fail(expected_text(spec));
        out << value;
        break;
      }
      case KeyType::StringList: {
        if (!node.IsSequence() || (node.size() == 0 && spec.default_value != "[]")) fail(expected_text(spec));
        out << YAML::BeginSeq;
        for (const auto& item : node) {
          if (!item.IsScalar()) fail(expected_text(spec));
          out << item.as<std::string>();
        }
        out << YAML::EndSeq;
        break;
      }
      case KeyType::FloatList: {
        if (!node.IsSequence() || node.size() != spec.list_size) fail(expected_text(spec));
        out << YAML::BeginSeq;
        for (const auto& item : node) {
          if (!item.IsScalar() || !in_range(item.as<double>())) fail(expected_text(spec));
          out << item.as<double>();
        }
        out << YAML::EndSeq;
        break;
      }
    }
  } catch (const YAML::BadConversion&) {
    fail(expected_text(spec));
  }
  return out.c_str();
}

// Walks a mapping, validating each leaf against the schema.
void collect(const YAML::Node& node, const std::string& prefix, const std::string& name,
             std::map<std::string, std::pair<YAML::Node, int>>* leaves) {
  for (const auto& entry : node) {
    const int line = entry.first.Mark().line + 1;
    const std::string where = name + ":" + std::to_string(line);
    SHARDLORA_CHECK(entry.first.IsScalar(), where, ": a key must be a plain name", prefix.empty() ? "" : " (in section '" + prefix + "')");
    const std::string key = entry.first.as<std::string>();
    const std::string path = prefix.empty() ? key : prefix + "." + key;
    if (find_spec(path)) {
      SHARDLORA_CHECK(!leaves->count(path), where, ": key '", path, "' is given twice");
      (*leaves)[path] = {entry.second, line};
      continue;
    }
    SHARDLORA_CHECK(is_section(path), where, ": unknown key '", path, "' (shardlora train --help-recipe lists them)");
    SHARDLORA_CHECK(entry.second.IsMap(), where, ": '", path, "' is a section and must hold keys");
    collect(entry.second, path, name, leaves);
  }
}

}  // namespace

const std::vector<KeySpec>& recipe_schema() {
  static const std::vector<KeySpec> schema = [] {
    KeySpec betas{"optimizer.betas", KeyType::FloatList, "[0.9, 0.999]", false, 0.0, 0.999999, {}, 2, "AdamW beta1, beta2"};
    return std::vector<KeySpec>{
        required_text("model.path", "Hugging Face model directory (float or bnb 4-bit)"),
        choice("model.dtype", "bf16", {"bf16", "fp32"}, "compute dtype of the model"),
        choice("model.quantization.type", "nf4", {"nf4", "fp4", "none"}, "how float base weights are held (none: float, plain LoRA)"),
        choice("model.quantization.blocksize", "64", {"32", "64", "128", "256", "512", "1024", "2048", "4096"}, "4-bit block size"),
        flag("model.quantization.double_quant", "true", "quantize the absmax values too (0.127 bit/param instead of 0.5)"),
        integer("lora.r", "16", 1, 4096, "adapter rank"),
        number("lora.alpha", "32", 1e-6, 1e6, "scaling numerator: alpha / r (alpha / sqrt(r) with rslora)"),
        number("lora.dropout", "0.05", 0, 0.999, "dropout on the adapter input"),
        text_list("lora.target_modules", "[all-linear]", "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (Phi-3: qkv_proj, o_proj, gate_up_proj, down_proj) or all-linear"),
        flag("lora.rslora", "false", "rank-stabilised scaling alpha / sqrt(r)"),
        text_list("lora.modules_to_save", "[]",
                  "whole matrices to train beside the adapters (PEFT's modules_to_save): embed_tokens, lm_head (untied)"),
        flag("lora.use_dora", "false", "DoRA: a trained magnitude per output row over the direction of W + scaling * B A (PEFT's use_dora)"),
        text("lora.init_from", "", "start from this PEFT adapter directory (ours or PEFT's; its r, alpha, rslora, use_dora and modules must be the recipe's)"),
        required_text("data.train", "training data: .jsonl, .json or a directory of .txt files"),
        text("data.val", "", "validation data (empty: data.val_fraction of data.train)"),
        number("data.val_fraction", "0", 0, 0.99, "share of data.train held out for validation when data.val is empty"),
        choice("data.format", "chat", {"alpaca", "chat", "text", "tokenized"}, "record format"),
        text("data.fields.instruction", "instruction", "alpaca: instruction field"),
        text("data.fields.input", "input", "alpaca: input field"),
        text("data.fields.output", "output", "alpaca: output field"),
        text("data.fields.messages", "messages", "chat: messages field"),
        text("data.fields.role", "role", "chat: role field of a message"),
        text("data.fields.content", "content", "chat: content field of a message"),
        text("data.fields.text", "text", "text: text field"),
        text("data.fields.input_ids", "input_ids", "tokenized: ids field"),
        text("data.fields.labels", "labels", "tokenized: labels field (optional in records)"),
        text_list("data.add_special_tokens", "[]",
                  "new special tokens (e.g. [\"<|tool|>\"]): added to the tokenizer written with the adapter, the embedding "
                  "and lm_head grown for them and only their rows trained (PEFT's trainable_token_indices)"),
        choice("data.template", "auto", {"auto", "llama-3", "chatml", "mistral", "llama-2", "alpaca", "custom"},
               "chat template (auto: the model's own Jinja chat_template, chatml if it has none; custom: the "
               "data.custom_template strings)"),
        text("data.custom_template.begin", "", "custom template: text once before the first message"),
        text("data.custom_template.system_prefix", "", "custom template: text before a system message"),
        text("data.custom_template.system_suffix", "", "custom template: text after a system message"),
        text("data.custom_template.user_prefix", "", "custom template: text before a user message"),
        text("data.custom_template.user_suffix", "", "custom template: text after a user message"),
        text("data.custom_template.assistant_prefix", "", "custom template: text before an assistant message (prompt)"),
        text("data.custom_template.assistant_suffix", "", "custom template: text after an assistant message (trained on; end it with the eos token)"),
        integer("data.max_seq_len", "2048", 2, 1 << 20, "tokens per sequence"),
        flag("data.packing", "true", "pack several examples into each sequence (attention never crosses them)"),
        choice("data.over_length", "truncate", {"truncate", "drop"}, "examples longer than max_seq_len"),
        choice("data.on_error", "fail", {"fail", "skip"}, "a malformed record: stop, or skip it and count it"),
        flag("data.train_on_prompt", "false", "also compute the loss on prompt tokens"),
        choice("optimizer.name", "paged_adamw_32bit", {"adamw", "paged_adamw_32bit", "paged_adamw_8bit"}, "optimizer and state bits"),
        number("optimizer.lr", "2e-4", 0, 10, "peak learning rate"),
        betas,
        number("optimizer.eps", "1e-8", 1e-30, 1, "AdamW epsilon"),
        number("optimizer.weight_decay", "0.0", 0, 10, "decoupled weight decay"),
        number("optimizer.loraplus_lr_ratio", "0", 0, 1e4,
               "LoRA+: the B matrices learn at this times optimizer.lr (PEFT's create_loraplus_optimizer; 16 is common); 0: off"),
        choice("optimizer.placement", "cpu", {"device", "cpu", "paged"},
               "where optimizer state lives: device memory, CPU memory, or CPU memory paged through gpu_pages device pages (paged_* names: cpu or paged)"),
        integer("optimizer.gpu_pages", "4", 1, 1 << 20, "paged: staging buffer size in pages"),
        choice("schedule.type", "cosine", {"constant", "linear", "cosine"}, "learning-rate schedule"),
        integer("schedule.warmup_steps", "0", 0, 1LL << 40, "linear warmup steps"),
        choice("training.device", "auto", {"auto", "cpu", "cuda"},
               "where the model trains: cuda = this rank's GPU (its local rank; Slurm's one bound GPU), auto = cuda when a GPU is visible, else cpu"),
        integer("training.seed", "0", 0, 1LL << 62, "seed for initialisation, sampling and dropout"),
        integer("training.micro_batch_size", "1", 1, 1 << 20, "sequences per forward/backward"),
        integer("training.gradient_accumulation_steps", "1", 1, 1 << 20, "micro-batches per optimizer step"),
        integer("training.max_steps", "0", 0, 1LL << 40, "optimizer steps (0: run training.epochs)"),
        integer("training.epochs", "1", 1, 1 << 20, "epochs when max_steps is 0"),
        number("training.grad_clip", "1.0", 0, 1e6, "global gradient-norm clip (0: off)"),
        flag("training.activation_checkpointing", "true", "recompute decoder layers in backward"),
        number("training.neftune_alpha", "0", 0, 1e6,
               "NEFTune: uniform noise on the embeddings in training, scaled alpha / sqrt(seq_len * hidden) as TRL; 0: off"),
        integer("training.threads", "0", 0, 4096, "CPU threads of each rank (libtorch and the CPU kernels); 0: the CPUs the rank is given"),
        integer("training.eval_every", "0", 0, 1LL << 40, "steps between evaluations (0: never)"),
        integer("training.save_every", "0", 0, 1LL << 40, "steps between checkpoints (0: at the end only)"),
        integer("training.keep_last", "3", 1, 1 << 20, "checkpoints kept"),
        integer("training.log_every", "10", 1, 1LL << 40, "steps between log lines"),
        choice("distributed.strategy", "shard", {"shard", "replicate"}, "4-bit base split across ranks, or a full copy on each"),
        choice("distributed.backend", "auto", {"auto", "nccl", "mpi", "tcp"},
               "collectives backend (auto: NCCL on GPUs; on CPUs MPI under mpirun, else tcp)"),
        integer("distributed.bucket_mb", "25", 1, 1 << 16, "gradient all-reduce bucket size"),
        integer("distributed.timeout_s", "300", 1, 1 << 24, "a collective older than this aborts the job; a rank silent for half of it is lost"),
        integer("distributed.load_timeout_s", "3600", 1, 1 << 24, "the same while ranks load the model (rank 0 may be slow)"),
        text("output.dir", "runs/run", "run directory: resolved recipe, metrics, checkpoints, adapter"),
        flag("output.tensorboard", "false", "also write the metrics as TensorBoard event files (events.out.tfevents.*) in output.dir"),
    };
  }();
  return schema;
}

std::string recipe_help() {
  std::ostringstream text;
  text << "Recipe keys (section.key: type = default  help); override any with section.key=value\n";
  std::string section;
  for (const KeySpec& spec : recipe_schema()) {
    const std::string top = spec.name.substr(0, spec.name.find('.'));
    if (top != section) text << "\n" << (section = top) << ":\n";
    text << "  " << spec.name << ": " << type_name(spec);
    if (spec.type == KeyType::Choice) {
      std::string options;
      for (const auto& c : spec.choices) options += (options.empty() ? "" : "|") + c;
      text << " (" << options << ")";
    } else if (spec.min < spec.max) {
      text << " in " << range_text(spec);
    }
    text << (spec.required ? " (required)" : " = " + (spec.default_value.empty() ? "\"\"" : spec.default_value)) << "\n      "
         << spec.help << "\n";
  }
  return text.str();
}

Recipe Recipe::parse(const std::string& yaml, const std::string& name, const std::vector<std::string>& overrides) {
  std::vector<YAML::Node> documents;
  try {
    documents = YAML::LoadAll(yaml);
  } catch (const YAML::Exception& error) {
    throw Error(name + ":" + std::to_string(error.mark.line + 1) + ": invalid YAML: " + error.msg);
  }
  // A second document would otherwise be ignored without a word.
  SHARDLORA_CHECK(documents.size() <= 1, name, ":", documents.size() > 1 ? documents[1].Mark().line + 1 : 0,
                  ": a second YAML document: a recipe is one document (remove the '---' or split the file)");
  const YAML::Node root = documents.empty() ? YAML::Node() : documents.front();
  SHARDLORA_CHECK(root.IsNull() || root.IsMap(), name, ": a recipe is a mapping of sections");
  std::map<std::string, std::pair<YAML::Node, int>> leaves;
  Recipe recipe;
  try {
    if (root.IsMap()) collect(root, "", name, &leaves);
    for (const auto& [key, leaf] : leaves) {
      const std::string where = name + ":" + std::to_string(leaf.second);
      recipe.values_[key] = {validate(*find_spec(key), leaf.first, where), where};
    }
  } catch (const YAML::Exception& error) {  // what the checks above did not foresee, still with its file and line
    throw Error(name + ":" + std::to_string(error.mark.line + 1) + ": " + error.msg);
  }
  for (const std::string& override_text : overrides) {
    const size_t equals = override_text.find('=');
    SHARDLORA_CHECK(equals != std::string::npos && equals > 0, "override '", override_text, "' is not section.key=value");
    const std::string key = override_text.substr(0, equals);
    const KeySpec* spec = find_spec(key);
    SHARDLORA_CHECK(spec, "override '", override_text, "': unknown key '", key, "' (shardlora train --help-recipe lists them)");
    YAML::Node node;
    try {
      node = YAML::Load(override_text.substr(equals + 1));
    } catch (const YAML::Exception& error) {
      throw Error("override '" + override_text + "': invalid value: " + error.msg);
    }
    recipe.values_[key] = {validate(*spec, node, "override '" + override_text + "'"), "override"};
  }
  for (const KeySpec& spec : recipe_schema()) {
    if (recipe.values_.count(spec.name)) continue;
    SHARDLORA_CHECK(!spec.required, name, ": key '", spec.name, "' is required (", spec.help, ")");
    recipe.values_[spec.name] = {spec.default_value.empty() ? "\"\"" : spec.default_value, "default"};
  }
  recipe.check_combinations();
  return recipe;
}

void Recipe::check_combinations() const {
  const auto where = [&](const std::string& key) {
    const std::string& from = origin(key);
    return (from == "default" ? std::string("default") : from) + ": key '" + key + "'";
  };
  const std::string name = get_string("optimizer.name"), placement = get_string("optimizer.placement");
  SHARDLORA_CHECK(name == "adamw" || placement != "device", where("optimizer.placement"), " is 'device', but optimizer.name '",
                  name, "' keeps its state in CPU memory: use placement cpu or paged, or name adamw");
  SHARDLORA_CHECK(get_string("data.val").empty() || get_float("data.val_fraction") == 0, where("data.val_fraction"),
                  " holds data out of data.train although data.val is given: set one of them");
  if (get_string("data.template") != "custom") {
    for (const KeySpec& spec : recipe_schema()) {
      SHARDLORA_CHECK(spec.name.rfind("data.custom_template.", 0) != 0 || get_string(spec.name).empty(), where(spec.name),
                      " is set, but data.template is '", get_string("data.template"), "', not custom");
    }
  }
}

void Recipe::require_paths(const std::vector<std::string>& keys) const {
  for (const std::string& key : keys) {
    const std::string path = get_string(key);
    if (path.empty() || std::filesystem::exists(path)) continue;
    throw Error(origin(key) + ": key '" + key + "': '" + path + "' does not exist");
  }
}

Recipe Recipe::load(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  SHARDLORA_CHECK(in, path, ": cannot open the recipe");
  std::ostringstream text;
  text << in.rdbuf();
  return parse(text.str(), path, overrides);
}

const Recipe::Value& Recipe::value(const std::string& key, KeyType type) const {
  const KeySpec* spec = find_spec(key);
  SHARDLORA_CHECK(spec, "recipe: no key '", key, "' in the schema");
  const bool compatible = spec->type == type || (type == KeyType::String && spec->type == KeyType::Choice);
  SHARDLORA_CHECK(compatible, "recipe: key '", key, "' is a ", type_name(*spec));
  return values_.at(key);
}

int64_t Recipe::get_int(const std::string& key) const { return YAML::Load(value(key, KeyType::Int).yaml).as<int64_t>(); }
double Recipe::get_float(const std::string& key) const { return YAML::Load(value(key, KeyType::Float).yaml).as<double>(); }
bool Recipe::get_bool(const std::string& key) const { return YAML::Load(value(key, KeyType::Bool).yaml).as<bool>(); }
std::string Recipe::get_string(const std::string& key) const {
  return YAML::Load(value(key, KeyType::String).yaml).as<std::string>();
}
std::vector<std::string> Recipe::get_strings(const std::string& key) const {
  return YAML::Load(value(key, KeyType::StringList).yaml).as<std::vector<std::string>>();
}
std::vector<double> Recipe::get_floats(const std::string& key) const {
  return YAML::Load(value(key, KeyType::FloatList).yaml).as<std::vector<double>>();
}

std::string Recipe::origin(const std::string& key) const {
  const auto it = values_.find(key);
  SHARDLORA_CHECK(it != values_.end(), "recipe: no key '", key, "'");
  return it->second.origin;
}

std::string Recipe::dump() const {
  // Nested sections in schema order, values in their canonical flow form.
  std::ostringstream text;
  std::vector<std::string> open;
  for (const KeySpec& spec : recipe_schema()) {
    std::vector<std::string> parts;
    std::stringstream split(spec.name);
    for (std::string part; std::getline(split, part, '.');) parts.push_back(part);
    size_t common = 0;
    while (common < open.size() && common + 1 < parts.size() && open[common] == parts[common]) ++common;
    open.resize(common);
    for (size_t depth = common; depth + 1 < parts.size(); ++depth) {
      text << std::string(2 * depth, ' ') << parts[depth] << ":\n";
      open.push_back(parts[depth]);
    }
    text << std::string(2 * (parts.size() - 1), ' ') << parts.back() << ": " << values_.at(spec.name).yaml << "\n";
  }
  return text.str();
}

}  // namespace shardlora::train
