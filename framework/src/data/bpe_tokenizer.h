// A tokenizer.json with a BPE model, run as Hugging Face's tokenizers library runs it:
//   1. added tokens (special or not) are cut out of the text first, matched exactly;
//   2. the normalizer (Sequence, Prepend, Replace, NFC) on the rest;
//   3. the pre-tokenizer (Sequence, Split with a regex via PCRE2 in UTF/UCP mode, ByteLevel
//      with GPT-2's regex and byte-to-unicode mapping, Digits, Metaspace) cuts words;
//   4. BPE merges each word by rank (lowest first, leftmost on ties); with ignore_merges a
//      word already in the vocabulary is one token; with byte_fallback unknown characters
//      become <0xXX> byte tokens, else the unk token;
//   5. the post-processor's template (TemplateProcessing) adds e.g. a leading bos.
// Decoding runs the decoder chain (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace).
// Components or options outside this list are errors naming the file and key.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "shardlora/data/tokenizer.h"

namespace shardlora::data {

// `file` names tokenizer.json in errors.
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const nlohmann::json& json, const std::string& file);

// tokenizer.model
std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::string& file);

}  // namespace shardlora::data
