#include "shardlora/data/tokenizer.h"

#include <filesystem>

#include "bpe_tokenizer.h"
#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/kernels/check.h"

namespace shardlora::data {
namespace {

namespace fs = std::filesystem;

// tokenizer_config.json names bos / eos / pad by text and may set add_bos_token;
// generation_config.json may add eos ids (Llama 3 stops on <|eot_id|> too).
void read_special_tokens(const std::string& dir, const Tokenizer& tokenizer, SpecialTokens* special) {
  const std::string config_path = dir + "/tokenizer_config.json";
  if (fs::exists(config_path)) {
    const nlohmann::json config = io::read_json_file(config_path);
    const auto resolve = [&](const char* key, std::optional<int64_t>* id) {
      const auto text = special_token_text(config, key, config_path);
      if (!text) return;
      const auto found = tokenizer.token_id(*text);
      SHARDLORA_CHECK(found, config_path, ": ", key, " '", *text, "' is not in the tokenizer's vocabulary");
      *id = found;
    };
    resolve("bos_token", &special->bos);
    resolve("eos_token", &special->eos);
    resolve("pad_token", &special->pad);
    if (const auto it = config.find("add_bos_token"); it != config.end() && it->is_boolean()) {
      special->add_bos = it->get<bool>() && special->bos;
    }
  }
  if (special->eos) special->stop_ids.push_back(*special->eos);
  const std::string generation_path = dir + "/generation_config.json";
  for (const int64_t id : io::eos_token_ids(generation_path)) {
    SHARDLORA_CHECK(id < tokenizer.vocab_size(), generation_path, ": eos_token_id ", id, " is not a token id of the tokenizer");
    if (std::find(special->stop_ids.begin(), special->stop_ids.end(), id) == special->stop_ids.end()) special->stop_ids.push_back(id);
  }
}

}  // namespace

std::optional<std::string> special_token_text(const nlohmann::json& config, const char* key, const std::string& file) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  SHARDLORA_CHECK(it->is_object() && it->contains("content") && (*it)["content"].is_string(), file, ": key '", key,
                  "' must be a token string or an object with a string 'content'");
  return (*it)["content"].get<std::string>();
}

std::vector<int64_t> Tokenizer::encode_prefix(const std::string& text, size_t max_tokens) const {
  std::vector<int64_t> ids = encode(text);
  if (ids.size() > max_tokens) ids.resize(max_tokens);
  return ids;
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir) {
  std::unique_ptr<Tokenizer> tokenizer;
  if (const std::string json_path = model_dir + "/tokenizer.json"; fs::exists(json_path)) {
    tokenizer = make_bpe_tokenizer(io::read_json_file(json_path), json_path);
  } else if (const std::string model_path = model_dir + "/tokenizer.model"; fs::exists(model_path)) {
    tokenizer = make_sentencepiece_tokenizer(model_path);
  } else {
    throw Error(model_dir + ": no tokenizer.json or tokenizer.model");
  }
  read_special_tokens(model_dir, *tokenizer, &tokenizer->special_);
  return tokenizer;
}

}  // namespace shardlora::data
