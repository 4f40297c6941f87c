// Tokenizers loaded from a model directory:
//   tokenizer.json  Hugging Face's fast-tokenizer file with a BPE model: byte-level (GPT-2,
//                   Llama 3, Qwen2, SmolLM) or Metaspace "▁" with byte fallback (Llama 2,
//                   Mistral); see bpe_tokenizer.h.
//   tokenizer.model a SentencePiece model (through libsentencepiece).
// The directory's tokenizer_config.json and generation_config.json name the special tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace shardlora::data {

struct SpecialTokens {
  std::optional<int64_t> bos, eos, pad;
  std::vector<int64_t> stop_ids;  // eos plus generation_config.json's eos_token_id list
  bool add_bos = false;           // the tokenizer starts every sequence with bos
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Ids of `text`. Special (added) tokens written in the text map to their ids; with
  // add_special_tokens the tokenizer's own template (e.g. a leading bos) is applied.
  virtual std::vector<int64_t> encode(const std::string& text, bool add_special_tokens = false) const = 0;
  // The first `max_tokens` ids of encode(text): a tokenizer that can stops early, so a
  // record far longer than the sequence it is cut to costs memory for what is kept.
  virtual std::vector<int64_t> encode_prefix(const std::string& text, size_t max_tokens) const;
  // Text of `ids`; special tokens left out when skip_special. Ids outside the vocabulary are
  // an error.
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special = false) const = 0;
  virtual int64_t vocab_size() const = 0;
  // The id of a token given by its exact vocabulary string (e.g. "<|eot_id|>").
  virtual std::optional<int64_t> token_id(const std::string& token) const = 0;

  const SpecialTokens& special() const { return special_; }

 protected:
  SpecialTokens special_;
  friend void read_special_tokens(const std::string& dir, Tokenizer& tokenizer);
};

// A special token named in tokenizer_config.json: "<s>", or {"content": "<s>", ...}
// (AddedToken); nullopt when the key is absent or null. Errors name `file` and the key.
std::optional<std::string> special_token_text(const nlohmann::json& config, const char* key, const std::string& file);

// tokenizer.json if present, else tokenizer.model; errors name the file and key.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir);

// Where an adapter's tokenizer is: its own directory when it holds tokenizer.json (an adapter
// trained with data.add_special_tokens), else the base model's.
std::string tokenizer_dir(const std::string& model_dir, const std::string& adapter_dir);

// The files of model_dir's tokenizer (tokenizer.json, tokenizer_config.json,
// special_tokens_map.json, chat template, generation_config.json) written into `out_dir` with
// `tokens` added as special tokens, as transformers' add_special_tokens then save_pretrained
// leave them: ids from the tokenizer's size on, in the order given, in added_tokens,
// added_tokens_decoder and additional_special_tokens. Returns their ids. A token already in
// the vocabulary, a repeated or empty one, or a tokenizer without tokenizer.json is an error
// naming `key`.
std::vector<int64_t> write_tokenizer_with_tokens(const std::string& model_dir, const std::vector<std::string>& tokens,
                                                 const std::string& out_dir, const std::string& key);
// That tokenizer, without writing its files.
std::unique_ptr<Tokenizer> load_tokenizer_with_tokens(const std::string& model_dir, const std::vector<std::string>& tokens,
                                                      const std::string& key);

}  // namespace shardlora::data
