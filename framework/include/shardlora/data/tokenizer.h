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
  friend std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir);
};

// A special token named in tokenizer_config.json: "<s>", or {"content": "<s>", ...}
// (AddedToken); nullopt when the key is absent or null. Errors name `file` and the key.
std::optional<std::string> special_token_text(const nlohmann::json& config, const char* key, const std::string& file);

// tokenizer.json if present, else tokenizer.model; errors name the file and key.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir);

}  // namespace shardlora::data
