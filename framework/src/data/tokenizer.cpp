#include "shardlora/data/tokenizer.h"

#include <filesystem>
#include <set>

#include "bpe_tokenizer.h"
#include "shardlora/io/durable_file.h"
#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/kernels/check.h"

namespace shardlora::data {

void read_special_tokens(const std::string& dir, Tokenizer& tokenizer);  // Tokenizer's friend: sets special_

namespace {

namespace fs = std::filesystem;

// tokenizer_config.json names bos / eos / pad by text and may set add_bos_token;
// generation_config.json may add eos ids (Llama 3 stops on <|eot_id|> too).
// Starting from what the tokenizer file itself says (a SentencePiece model's bos / eos, a
// post-processor's leading bos).
SpecialTokens special_tokens_of(const std::string& dir, const Tokenizer& tokenizer) {
  SpecialTokens tokens = tokenizer.special();
  SpecialTokens* special = &tokens;
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
  return tokens;
}

// AddedToken(special=True) as transformers writes it, in tokenizer.json and in the config.
nlohmann::ordered_json added_token(const std::string& content) {
  return {{"content", content}, {"lstrip", false}, {"normalized", false}, {"rstrip", false}, {"single_word", false}, {"special", true}};
}

nlohmann::ordered_json read_ordered_json(const std::string& path) {
  return fs::exists(path) ? nlohmann::ordered_json::parse(io::read_json_file(path).dump()) : nlohmann::ordered_json::object();
}

// model_dir's tokenizer.json with `tokens` appended to added_tokens, and their ids.
std::pair<nlohmann::ordered_json, std::vector<int64_t>> tokenizer_json_with_tokens(const std::string& model_dir,
                                                                                   const std::vector<std::string>& tokens,
                                                                                   const std::string& key) {
  const std::string json_path = model_dir + "/tokenizer.json";
  SHARDLORA_CHECK(fs::exists(json_path), key, ": adding tokens needs the model's tokenizer.json (", model_dir, " has none)");
  const auto tokenizer = load_tokenizer(model_dir);
  nlohmann::ordered_json json = read_ordered_json(json_path);
  std::vector<int64_t> ids;
  std::set<std::string> seen;
  for (const std::string& token : tokens) {
    SHARDLORA_CHECK(!token.empty(), key, ": an empty token");
    SHARDLORA_CHECK(seen.insert(token).second, key, ": '", token, "' is listed twice");
    const auto existing = tokenizer->token_id(token);
    SHARDLORA_CHECK(!existing, key, ": '", token, "' is already in the vocabulary (id ", existing.value_or(0), ")");
    ids.push_back(tokenizer->vocab_size() + static_cast<int64_t>(ids.size()));
    nlohmann::ordered_json entry = {{"id", ids.back()}};
    entry.update(added_token(token));
    json["added_tokens"].push_back(entry);
  }
  return {json, ids};
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
  read_special_tokens(model_dir, *tokenizer);
  return tokenizer;
}

void read_special_tokens(const std::string& dir, Tokenizer& tokenizer) { tokenizer.special_ = special_tokens_of(dir, tokenizer); }

std::string tokenizer_dir(const std::string& model_dir, const std::string& adapter_dir) {
  return !adapter_dir.empty() && fs::exists(adapter_dir + "/tokenizer.json") ? adapter_dir : model_dir;
}

std::vector<int64_t> write_tokenizer_with_tokens(const std::string& model_dir, const std::vector<std::string>& tokens,
                                                 const std::string& out_dir, const std::string& key) {
  const auto [json, ids] = tokenizer_json_with_tokens(model_dir, tokens, key);
  nlohmann::ordered_json config = read_ordered_json(model_dir + "/tokenizer_config.json");
  nlohmann::ordered_json special_map = read_ordered_json(model_dir + "/special_tokens_map.json");
  if (!config.contains("added_tokens_decoder")) config["added_tokens_decoder"] = nlohmann::ordered_json::object();
  for (size_t i = 0; i < tokens.size(); ++i) {
    config["added_tokens_decoder"][std::to_string(ids[i])] = added_token(tokens[i]);
    for (auto* file : {&config, &special_map}) (*file)["additional_special_tokens"].push_back(tokens[i]);
  }
  io::create_directories(out_dir);
  io::write_file_atomically(out_dir + "/tokenizer.json", json.dump(2) + "\n");
  io::write_file_atomically(out_dir + "/tokenizer_config.json", config.dump(2) + "\n");
  io::write_file_atomically(out_dir + "/special_tokens_map.json", special_map.dump(2) + "\n");
  for (const char* name : {"chat_template.jinja", "chat_template.json", "generation_config.json"}) {
    if (fs::exists(model_dir + "/" + name)) io::copy_file_durably(model_dir + "/" + name, out_dir + "/" + name);
  }
  return ids;
}

std::unique_ptr<Tokenizer> load_tokenizer_with_tokens(const std::string& model_dir, const std::vector<std::string>& tokens,
                                                      const std::string& key) {
  const auto [json, ids] = tokenizer_json_with_tokens(model_dir, tokens, key);
  auto tokenizer = make_bpe_tokenizer(nlohmann::json::parse(json.dump()), model_dir + "/tokenizer.json (with " + key + ")");
  read_special_tokens(model_dir, *tokenizer);
  return tokenizer;
}

}  // namespace shardlora::data
