// `shardlora generate MODEL_DIR (--prompt TEXT | --prompt-ids ...)`: continues a prompt with
// the model (4-bit base by default, as it was fine-tuned) and an optional PEFT adapter. Text
// goes through the model directory's tokenizer (bos added as the tokenizer does); ids go in
// and out as they are. The end-of-sequence ids come from the model directory. With
// --template (or --recipe, whose data.template may be custom) the prompt is a user message
// in that chat template, followed by the assistant's prefix, as the model was fine-tuned.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <sstream>

#include "commands.h"
#include "shardlora/data/tokenizer.h"
#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/kernels/check.h"
#include "shardlora/nn/generation.h"
#include "shardlora/nn/hf_loader.h"
#include "shardlora/nn/peft_adapter.h"
#include "shardlora/tensor/dtypes.h"
#include "shardlora/train/from_recipe.h"

namespace shardlora::launcher {
namespace {

struct GenerateArgs {
  std::string model_dir;
  std::string adapter_dir;
  std::string prompt_ids;
  std::string prompt_text;
  std::string quant = "nf4";
  std::string dtype = "bf16";
  std::string template_name;
  std::string recipe_path;
  std::string system;
  nn::GenerationOptions generation;
  std::vector<int64_t> eos_ids;
  bool ignore_eos = false;
  bool json = false;
};

// "1, 2,3" or "1 2 3" -> {1, 2, 3}; errors name the offending word.
std::vector<int64_t> parse_ids(const std::string& text) {
  std::string spaced = text;
  for (char& c : spaced) c = c == ',' ? ' ' : c;
  std::istringstream words(spaced);
  std::vector<int64_t> ids;
  for (std::string word; words >> word;) {
    size_t used = 0;
    int64_t id = -1;
    try {
      id = std::stoll(word, &used);
    } catch (const std::exception&) {
    }
    SHARDLORA_CHECK(used == word.size() && id >= 0, "--prompt-ids: '", word, "' is not a token id (a non-negative integer)");
    ids.push_back(id);
  }
  SHARDLORA_CHECK(!ids.empty(), "--prompt-ids: no token ids given");
  return ids;
}

// eos_token_id of generation_config.json, else of config.json.
std::vector<int64_t> model_eos_ids(const std::string& dir) {
  const std::vector<int64_t> ids = io::eos_token_ids(dir + "/generation_config.json");
  return ids.empty() ? io::eos_token_ids(dir + "/" + io::kConfigFile) : ids;
}

std::string join(const std::vector<int64_t>& ids) {
  std::string text;
  for (size_t i = 0; i < ids.size(); ++i) text += (i ? " " : "") + std::to_string(ids[i]);
  return text;
}

// The prompt as a user turn of the chat template: rendered and tokenized as in training.
std::vector<int64_t> chat_prompt(const data::ChatTemplate& chat_template, const data::Tokenizer& tokenizer, const GenerateArgs& args) {
  std::vector<data::Message> messages;
  if (!args.system.empty()) messages.push_back({"system", args.system});
  messages.push_back({"user", args.prompt_text});
  return data::tokenize_segments(tokenizer, data::render_generation_prompt(chat_template, messages)).input_ids;
}

int run_generate(GenerateArgs args, bool dtype_given, bool quant_given) {
  std::optional<data::ChatTemplate> chat_template;
  std::unique_ptr<data::Tokenizer> tokenizer;
  if (!args.prompt_text.empty()) tokenizer = data::load_tokenizer(data::tokenizer_dir(args.model_dir, args.adapter_dir));
  if (!args.recipe_path.empty()) {
    const train::Recipe recipe = train::Recipe::load(args.recipe_path);
    if (!dtype_given) args.dtype = recipe.get_string("model.dtype");
    if (!quant_given) args.quant = recipe.get_string("model.quantization.type");
    // data.template auto: the template of the model being run.
    if (tokenizer) chat_template = train::chat_template_from(recipe, args.model_dir, *tokenizer);
  } else if (!args.template_name.empty() && tokenizer) {
    chat_template = data::resolve_chat_template(args.template_name, args.model_dir, *tokenizer);
  }
  SHARDLORA_CHECK(args.system.empty() || chat_template || args.prompt_text.empty(), "--system needs a chat template (--template or --recipe)");
  std::vector<int64_t> prompt;
  if (!args.prompt_text.empty()) {
    prompt = chat_template ? chat_prompt(*chat_template, *tokenizer, args) : tokenizer->encode(args.prompt_text, /*add_special_tokens=*/true);
  } else {
    SHARDLORA_CHECK(args.template_name.empty() && args.recipe_path.empty() && args.system.empty(),
                    "--template, --recipe and --system format a --prompt text, not --prompt-ids");
    prompt = parse_ids(args.prompt_ids);
  }
  nn::ModelOptions options;
  options.compute_dtype = *scalar_type_from_name(args.dtype);
  options.quantize_base = args.quant != "none";
  if (options.quantize_base) options.quant.type = args.quant == "fp4" ? kernels::QuantType::FP4 : kernels::QuantType::NF4;
  options.lora.r = 0;
  std::optional<nn::PeftAdapter> adapter;
  if (!args.adapter_dir.empty()) {
    adapter = nn::read_peft_adapter(args.adapter_dir);
    nn::set_adapter_options(*adapter, options);
  }
  nn::LlamaModel model = nn::load_hf_model(args.model_dir, options);
  if (adapter) nn::load_adapter_weights(model, *adapter, args.adapter_dir);
  for (const int64_t id : args.eos_ids) {
    SHARDLORA_CHECK(id >= 0 && id < model->config().vocab_size, "--eos-id ", id, " is outside the model's vocabulary [0, ",
                    model->config().vocab_size, ")");
  }

  args.generation.eos_token_ids = args.ignore_eos           ? std::vector<int64_t>{}
                                  : !args.eos_ids.empty()    ? args.eos_ids
                                  : tokenizer                ? tokenizer->special().stop_ids
                                                             : model_eos_ids(args.model_dir);
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int64_t> generated = nn::generate(model, prompt, args.generation);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto& eos = args.generation.eos_token_ids;
  const bool stopped_at_eos = !generated.empty() && std::find(eos.begin(), eos.end(), generated.back()) != eos.end();
  if (args.json) {
    nlohmann::json result = {{"prompt_ids", prompt},
                             {"generated_ids", generated},
                             {"stop_reason", stopped_at_eos ? "eos" : "max_new_tokens"},
                             {"seconds", seconds}};
    if (tokenizer) result["text"] = tokenizer->decode(generated, /*skip_special=*/true);
    // Generated text need not be valid UTF-8 (a random model, a cut multi-byte character).
    std::cout << result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::cout << (tokenizer ? tokenizer->decode(generated, /*skip_special=*/true) : join(generated)) << "\n";
    std::fprintf(stderr, "generated %zu tokens in %.2f s (%s)\n", generated.size(), seconds,
                 stopped_at_eos ? "end of sequence" : "max new tokens");
  }
  return 0;
}

}  // namespace

Subcommand add_generate_command(CLI::App& root) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* app = root.add_subcommand("generate", "Generate from a base model and an optional adapter (text or token ids)");
  app->add_option("MODEL_DIR", args->model_dir, "Hugging Face model directory (float or bnb 4-bit)")
      ->required()
      ->check(CLI::ExistingDirectory);
  app->add_option("--adapter", args->adapter_dir, "PEFT adapter directory")->check(CLI::ExistingDirectory);
  auto* ids = app->add_option("--prompt-ids", args->prompt_ids, "Prompt token ids, comma or space separated; output: ids");
  auto* text = app->add_option("--prompt", args->prompt_text, "Prompt text, through the model's tokenizer; output: text");
  ids->excludes(text);
  CLI::Option_group* prompt = app->add_option_group("prompt");
  prompt->add_option(ids);
  prompt->add_option(text);
  prompt->require_option(1);
  app->add_option("--max-new-tokens", args->generation.max_new_tokens, "Most tokens to generate")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app->add_option("--temperature", args->generation.temperature, "Sampling temperature (0: greedy)")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  app->add_option("--top-k", args->generation.top_k, "Sample from the k most likely tokens (0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--top-p", args->generation.top_p, "Nucleus sampling: smallest set with this probability (1: off)")
      ->check(CLI::Range(1e-9, 1.0))
      ->capture_default_str();
  app->add_option("--seed", args->generation.seed, "Sampling seed")->capture_default_str();
  app->add_option("--eos-id", args->eos_ids, "End-of-sequence token id(s) (default: the model's generation_config.json)");
  app->add_flag("--ignore-eos", args->ignore_eos, "Always generate --max-new-tokens tokens")->excludes("--eos-id");
  app->add_option("--quant", args->quant, "How float base weights are held: nf4, fp4 (double-quantized) or none (float)")
      ->check(CLI::IsMember({"nf4", "fp4", "none"}))
      ->capture_default_str();
  auto* dtype = app->add_option("--dtype", args->dtype, "Compute dtype")->check(CLI::IsMember({"bf16", "fp32"}))->capture_default_str();
  auto* chat = app->add_option("--template", args->template_name, "Format --prompt as a user message of this chat template")
                   ->check(CLI::IsMember({"auto", "llama-3", "chatml", "mistral", "llama-2", "alpaca"}));
  app->add_option("--recipe", args->recipe_path,
                  "Format --prompt with the recipe's data.template (custom too); its model.dtype and quantization "
                  "are the defaults of --dtype and --quant")
      ->check(CLI::ExistingFile)
      ->excludes(chat);
  app->add_option("--system", args->system, "System message before the prompt (with --template or --recipe)");
  app->add_flag("--json", args->json, "Print prompt and generated ids (and text), stop reason as one JSON object");
  auto* quant = app->get_option("--quant");
  return {app, [args, dtype, quant] { return run_generate(*args, dtype->count() > 0, quant->count() > 0); }};
}

}  // namespace shardlora::launcher
