#include "bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/utf8.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <array>
#include <functional>
#include <mutex>
#include <shared_mutex>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "shardlora/data/byte_level.h"
#include "shardlora/data/utf8.h"
#include "shardlora/kernels/check.h"

namespace shardlora::data {
namespace {

using Json = nlohmann::json;

// GPT-2's pre-tokenizer regex (ByteLevel with use_regex).
constexpr const char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// A compiled PCRE2 pattern in UTF mode with Unicode properties for \s, \d, \w.
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &error,
                          &offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      throw Error(where + ": regex " + pattern + " does not compile at offset " + std::to_string(offset) + ": " +
                  reinterpret_cast<const char*>(message));
    }
    // Compiled to machine code where PCRE2 can (matching dominated encoding without it).
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // [begin, end) of every non-overlapping match, left to right. Safe from several threads:
  // the match data is each call's own (a compiled pattern is shared read-only).
  std::vector<std::pair<size_t, size_t>> matches(const std::string& text) const {
    const std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match_data(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    SHARDLORA_CHECK(match_data, "tokenizer regex: out of memory for match data");
    std::vector<std::pair<size_t, size_t>> found;
    size_t start = 0;
    // PCRE2 checks the whole subject's UTF-8 on every call unless told not to: once is enough.
    uint32_t options = 0;
    while (start <= text.size()) {
      const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
      int rc = pcre2_match(code_, subject, text.size(), start, options, match_data.get(), nullptr);
      // The JIT's stack is small (32 KiB): a match that outgrows it runs interpreted.
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) rc = pcre2_match(code_, subject, text.size(), start, options | PCRE2_NO_JIT, match_data.get(), nullptr);
      options = PCRE2_NO_UTF_CHECK;
      if (rc == PCRE2_ERROR_NOMATCH) break;
      SHARDLORA_CHECK(rc > 0, "tokenizer regex: matching failed with PCRE2 error ", rc);
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data.get());
      if (ovector[1] == ovector[0]) {  // an empty match: step over one character
        start = ovector[0] + (ovector[0] < text.size() ? utf8_length(static_cast<unsigned char>(text[ovector[0]])) : 1);
        continue;
      }
      found.emplace_back(ovector[0], ovector[1]);
      start = ovector[1];
    }
    return found;
  }

 private:
  pcre2_code* code_ = nullptr;
};

// A word on its way through the pre-tokenizers; `at_start`: it begins the input text.
struct Piece {
  std::string text;
  bool at_start;
};
using PreTokenizer = std::function<std::vector<Piece>(std::vector<Piece>)>;
using Normalizer = std::function<std::string(std::string)>;
using Decoder = std::function<std::vector<std::string>(std::vector<std::string>)>;

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  if (from.empty()) return text;
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

// Per first byte, the indices of the added tokens starting with it, longest first.
using AddedIndex = std::array<std::vector<size_t>, 256>;

// Character classes as Rust's char methods (tokenizers' AddedVocabulary uses them).
// The character ending at `at`; `start` is where it begins.
UChar32 char_before(const std::string& text, size_t at, size_t* start) {
  int32_t offset = static_cast<int32_t>(at);
  UChar32 c;
  U8_PREV(reinterpret_cast<const uint8_t*>(text.data()), 0, offset, c);
  *start = static_cast<size_t>(offset);
  return c;
}

UChar32 char_at(const std::string& text, size_t at, size_t* next) {
  int32_t offset = static_cast<int32_t>(at);
  UChar32 c;
  U8_NEXT(reinterpret_cast<const uint8_t*>(text.data()), offset, static_cast<int32_t>(text.size()), c);
  *next = static_cast<size_t>(offset);
  return c;
}

// Rust regex's Unicode \w, which tokenizers' single_word checks with.
bool is_word_char(UChar32 c) {
  if (c < 0) return false;
  const int8_t category = u_charType(c);
  return u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL) || category == U_NON_SPACING_MARK ||
         category == U_ENCLOSING_MARK || category == U_COMBINING_SPACING_MARK || category == U_DECIMAL_DIGIT_NUMBER ||
         category == U_CONNECTOR_PUNCTUATION;
}

bool word_char_before(const std::string& text, size_t at) {
  size_t start = 0;
  return at > 0 && is_word_char(char_before(text, at, &start));
}

bool word_char_after(const std::string& text, size_t at) {
  size_t next = 0;
  return at < text.size() && is_word_char(char_at(text, at, &next));
}

// Where the run of whitespace ending at `at` begins.
size_t whitespace_run_before(const std::string& text, size_t at) {
  for (size_t before = at; at > 0 && u_isUWhiteSpace(char_before(text, at, &before)); at = before) {
  }
  return at;
}

class Parser {
 public:
  explicit Parser(std::string file) : file_(std::move(file)) {}

  const Json& field(const Json& object, const char* key, const std::string& where) const {
    const auto it = object.find(key);
    SHARDLORA_CHECK(it != object.end(), file_, ": ", where, " has no '", key, "'");
    return *it;
  }
  std::string string(const Json& object, const char* key, const std::string& where) const {
    const Json& value = field(object, key, where);
    SHARDLORA_CHECK(value.is_string(), file_, ": ", where, ".", key, " must be a string, found ", value.dump());
    return value.get<std::string>();
  }
  bool flag(const Json& object, const char* key, bool fallback) const {
    const auto it = object.find(key);
    if (it == object.end() || it->is_null()) return fallback;
    SHARDLORA_CHECK(it->is_boolean(), file_, ": '", key, "' must be true or false, found ", it->dump());
    return it->get<bool>();
  }
  // A Replace / Split pattern: {"String": s} or {"Regex": r}.
  std::pair<std::string, bool> pattern(const Json& object, const std::string& where) const {
    const Json& pattern = field(object, "pattern", where);
    if (pattern.contains("String")) return {pattern["String"].get<std::string>(), false};
    SHARDLORA_CHECK(pattern.contains("Regex"), file_, ": ", where, ".pattern must hold String or Regex");
    return {pattern["Regex"].get<std::string>(), true};
  }
  [[noreturn]] void unsupported(const std::string& where, const Json& value) const {
    throw Error(file_ + ": " + where + " " + value.dump().substr(0, 200) + " is not supported");
  }
  const std::string& file() const { return file_; }

 private:
  std::string file_;
};

class BpeTokenizer : public Tokenizer {
 public:
  BpeTokenizer(const Json& json, const std::string& file) : parser_(file) {
    SHARDLORA_CHECK(json.is_object(), file, ": not a JSON object");
    try {
      parse(json);
    } catch (const Json::exception& error) {  // a field of another type than the format's, met where no check names it
      throw Error(file + ": a field has the wrong type for tokenizer.json (" + error.what() + ")");
    }
  }

  std::vector<int64_t> encode(const std::string& text, bool add_special_tokens) const override {
    std::vector<int64_t> ids;
    if (add_special_tokens) ids = template_prefix_;
    encode_sections(text, SIZE_MAX, &ids);
    if (add_special_tokens) ids.insert(ids.end(), template_suffix_.begin(), template_suffix_.end());
    return ids;
  }

  // Exact: pre-tokenized words are encoded independently, left to right, so the words
  // before the cut come out as in the whole text.
  std::vector<int64_t> encode_prefix(const std::string& text, size_t max_tokens) const override {
    std::vector<int64_t> ids;
    encode_sections(text, max_tokens, &ids);
    if (ids.size() > max_tokens) ids.resize(max_tokens);
    return ids;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const override {
    std::vector<std::string> tokens;
    for (const int64_t id : ids) {
      SHARDLORA_CHECK(id >= 0 && id < vocab_size(), "decode: token id ", id, " is outside the vocabulary [0, ", vocab_size(), ")");
      if (const auto it = added_index_.find(id); it != added_index_.end()) {
        // Added tokens go through the decoder like the others, as in tokenizers (Gemma 3's
        // "▁▁" ... whitespace tokens become spaces there).
        const auto& added = added_tokens_[static_cast<size_t>(it->second)];
        if (!(skip_special && added.special)) tokens.push_back(added.content);
        continue;
      }
      tokens.push_back(id_to_token_[static_cast<size_t>(id)]);
    }
    for (const Decoder& decoder : decoders_) tokens = decoder(std::move(tokens));
    std::string text;
    for (const auto& piece : tokens) text += (decoders_.empty() && !text.empty() ? " " : "") + piece;  // tokenizers joins by spaces
    return text;
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }

  std::optional<int64_t> token_id(const std::string& token) const override {
    const auto it = vocab_.find(token);
    if (it == vocab_.end()) return std::nullopt;
    return it->second;
  }

 private:
  struct AddedToken {
    int64_t id;
    std::string content;
    bool special;
    bool normalized;   // matched in the normalized text (else in the raw text, before normalizers)
    bool lstrip, rstrip;  // the match takes the whitespace on its left / right with it
    bool single_word;  // only where no word character touches it
    std::string pattern;  // what is matched: the content, normalized for a normalized token (as tokenizers builds its trie)
  };
  // A match of an added token: the bytes it takes [begin, end) and its id.
  struct AddedMatch {
    size_t begin, end;
    int64_t id;
  };

  void parse(const Json& json) {
    const Json& model = parser_.field(json, "model", "the file");
    const Json added = json.value("added_tokens", Json::array());
    const Json* vocab = model.is_object() && model.contains("vocab") ? &model["vocab"] : nullptr;
    entries_ = static_cast<int64_t>((vocab ? vocab->size() : 0) + added.size());
    parse_model(model);
    if (json.contains("normalizer") && !json["normalizer"].is_null()) add_normalizer(json["normalizer"], "normalizer");
    parse_added_tokens(added);  // after the normalizers: normalized tokens are matched as normalized
    if (json.contains("pre_tokenizer") && !json["pre_tokenizer"].is_null()) {
      add_pre_tokenizer(json["pre_tokenizer"], "pre_tokenizer");
    }
    if (json.contains("decoder") && !json["decoder"].is_null()) add_decoder(json["decoder"], "decoder");
    if (json.contains("post_processor") && !json["post_processor"].is_null()) {
      parse_post_processor(json["post_processor"], "post_processor");
    }
    special_.add_bos = !template_prefix_.empty();
  }

  void parse_model(const Json& model) {
    const std::string type = parser_.string(model, "type", "model");
    if (type != "BPE") parser_.unsupported("model.type", model["type"]);
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(key) && !model[key].is_null() && !model[key].get<std::string>().empty()) {
        parser_.unsupported(std::string("model.") + key, model[key]);
      }
    }
    if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() > 0) {
      parser_.unsupported("model.dropout", model["dropout"]);
    }
    byte_fallback_ = parser_.flag(model, "byte_fallback", false);
    fuse_unk_ = parser_.flag(model, "fuse_unk", false);
    ignore_merges_ = parser_.flag(model, "ignore_merges", false);
    const Json& vocab = parser_.field(model, "vocab", "model");
    SHARDLORA_CHECK(vocab.is_object(), parser_.file(), ": model.vocab must be an object of token -> id");
    for (const auto& [token, id] : vocab.items()) {
      SHARDLORA_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0, parser_.file(), ": model.vocab['", token,
                      "'] must be a non-negative id, found ", id.dump());
      add_vocab(token, id.get<int64_t>());
    }
    if (model.contains("unk_token") && !model["unk_token"].is_null()) {
      const std::string unk = model["unk_token"].get<std::string>();
      const auto it = vocab_.find(unk);
      SHARDLORA_CHECK(it != vocab_.end(), parser_.file(), ": model.unk_token '", unk, "' is not in the vocabulary");
      unk_id_ = it->second;
    }
    const Json& merges = parser_.field(model, "merges", "model");
    SHARDLORA_CHECK(merges.is_array(), parser_.file(), ": model.merges must be a list");
    int64_t rank = 0;
    for (const Json& merge : merges) {
      std::string left, right;
      if (merge.is_string()) {  // "left right"
        const std::string text = merge.get<std::string>();
        const size_t space = text.find(' ', 1);
        SHARDLORA_CHECK(space != std::string::npos, parser_.file(), ": model.merges[", rank, "] '", text, "' is not 'left right'");
        left = text.substr(0, space);
        right = text.substr(space + 1);
      } else {
        SHARDLORA_CHECK(merge.is_array() && merge.size() == 2, parser_.file(), ": model.merges[", rank, "] must be \"a b\" or [a, b]");
        left = merge[0].get<std::string>();
        right = merge[1].get<std::string>();
      }
      merge_ranks_.emplace(pair_key(left, right), rank++);
    }
  }

  void add_vocab(const std::string& token, int64_t id) {
    // Ids index a table: one far beyond the entries (a corrupt file) must not size it.
    SHARDLORA_CHECK(id < 4 * entries_ + 65536, parser_.file(), ": token '", token, "' has id ", id, ", far beyond the file's ",
                    entries_, " entries (a corrupt tokenizer.json?)");
    vocab_[token] = id;
    if (static_cast<size_t>(id) >= id_to_token_.size()) id_to_token_.resize(static_cast<size_t>(id) + 1);
    id_to_token_[static_cast<size_t>(id)] = token;
  }

  void parse_added_tokens(const Json& added) {
    SHARDLORA_CHECK(added.is_array(), parser_.file(), ": added_tokens must be a list");
    for (const Json& token : added) {
      const std::string content = parser_.string(token, "content", "added_tokens[]");
      const Json& id = parser_.field(token, "id", "added token '" + content + "'");
      SHARDLORA_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0, parser_.file(), ": added token '", content,
                      "' has id ", id.dump());
      SHARDLORA_CHECK(!content.empty(), parser_.file(), ": an added token has empty content");
      added_index_[id.get<int64_t>()] = static_cast<int64_t>(added_tokens_.size());
      added_tokens_.push_back({id.get<int64_t>(), content, parser_.flag(token, "special", false), parser_.flag(token, "normalized", false),
                               parser_.flag(token, "lstrip", false), parser_.flag(token, "rstrip", false),
                               parser_.flag(token, "single_word", false), content});
      if (!vocab_.count(content)) added_only_.insert(content);
      AddedToken& last = added_tokens_.back();
      if (last.normalized) {
        for (const Normalizer& normalizer : normalizers_) last.pattern = normalizer(std::move(last.pattern));
      }
      add_vocab(content, id.get<int64_t>());
    }
    // By first byte, longest first, so "<|im_start|>" wins over a shorter token it starts with.
    for (size_t i = 0; i < added_tokens_.size(); ++i) {
      if (added_tokens_[i].pattern.empty()) continue;  // normalized away: never matched
      auto& index = added_tokens_[i].normalized ? normalized_added_by_first_byte_ : raw_added_by_first_byte_;
      index[static_cast<unsigned char>(added_tokens_[i].pattern[0])].push_back(i);
    }
    for (auto* index : {&raw_added_by_first_byte_, &normalized_added_by_first_byte_}) {
      for (auto& candidates : *index) {
        std::stable_sort(candidates.begin(), candidates.end(), [&](size_t a, size_t b) {
          return added_tokens_[a].pattern.size() > added_tokens_[b].pattern.size();
        });
      }
    }
  }

  // The longest added token of `index` whose pattern starts at `at`, or null.
  const AddedToken* added_token_at(const std::string& text, size_t at, const AddedIndex& index) const {
    for (const size_t i : index[static_cast<unsigned char>(text[at])]) {
      if (text.compare(at, added_tokens_[i].pattern.size(), added_tokens_[i].pattern) == 0) return &added_tokens_[i];
    }
    return nullptr;
  }

  // The first added token of `index` at or after `start`, with its flags applied as
  // tokenizers' AddedVocabulary applies them (single_word: no letter or digit on either side,
  // else the match is passed over; lstrip / rstrip: the adjacent whitespace run joins it);
  // id -1 and begin = end = text size when there is none. One scan of the text, checking
  // only the tokens that start with each byte.
  AddedMatch next_added_token(const std::string& text, size_t start, const AddedIndex& index) const {
    for (size_t at = start; at < text.size(); ++at) {
      const AddedToken* token = added_token_at(text, at, index);
      if (!token) continue;
      size_t begin = at, end = at + token->pattern.size();
      if (token->single_word && (word_char_before(text, begin) || word_char_after(text, end))) {
        at = end - 1;  // tokenizers' matches do not overlap: the text it covered stays text
        continue;
      }
      if (token->lstrip) begin = std::max(start, whitespace_run_before(text, begin));
      if (token->rstrip) {
        // The whitespace, up to where the next added token's own match begins (Gemma's "\n\n").
        for (size_t next = end; end < text.size() && !added_token_at(text, end, index) && u_isUWhiteSpace(char_at(text, end, &next));) {
          end = next;
        }
      }
      return {begin, end, token->id};
    }
    return {text.size(), text.size(), -1};
  }

  // The components of a Sequence, each with its place for errors.
  template <typename Add>
  void for_each_item(const Json& spec, const char* key, const std::string& where, Add add) {
    const Json& list = parser_.field(spec, key, where);
    SHARDLORA_CHECK(list.is_array(), parser_.file(), ": ", where, ".", key, " must be a list");
    for (size_t i = 0; i < list.size(); ++i) add(list[i], where + "." + key + "[" + std::to_string(i) + "]");
  }

  void add_normalizer(const Json& spec, const std::string& where) {
    const std::string type = parser_.string(spec, "type", where);
    if (type == "Sequence") {
      for_each_item(spec, "normalizers", where, [&](const Json& item, const std::string& at) { add_normalizer(item, at); });
    } else if (type == "Prepend") {
      const std::string prefix = parser_.string(spec, "prepend", where);
      normalizers_.push_back([prefix](std::string text) { return text.empty() ? text : prefix + text; });
    } else if (type == "Replace") {
      const auto [pattern, is_regex] = parser_.pattern(spec, where);
      if (is_regex) parser_.unsupported(where + ".pattern", spec["pattern"]);
      const std::string content = parser_.string(spec, "content", where);
      normalizers_.push_back([pattern = pattern, content](std::string text) { return replace_all(std::move(text), pattern, content); });
    } else if (type == "NFC") {
      normalizers_.push_back([](std::string text) {
        UErrorCode status = U_ZERO_ERROR;
        const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
        SHARDLORA_CHECK(U_SUCCESS(status), "tokenizer: ICU's NFC normalizer is unavailable: ", u_errorName(status));
        const icu::UnicodeString normalized = nfc->normalize(icu::UnicodeString::fromUTF8(text), status);
        SHARDLORA_CHECK(U_SUCCESS(status), "tokenizer: NFC normalization failed: ", u_errorName(status));
        std::string out;
        normalized.toUTF8String(out);
        return out;
      });
    } else {
      parser_.unsupported(where, spec);
    }
  }

  // Split behaviours of tokenizers' SplitDelimiterBehavior, for matched spans.
  static std::vector<Piece> split(const std::vector<Piece>& pieces, const Regex& regex, const std::string& behavior, bool invert) {
    std::vector<Piece> out;
    for (const Piece& piece : pieces) {
      std::vector<std::pair<size_t, size_t>> spans;  // (begin, end) of every part, with is_match
      std::vector<bool> is_match;
      size_t last = 0;
      for (const auto& [begin, end] : regex.matches(piece.text)) {
        if (begin > last) {
          spans.emplace_back(last, begin);
          is_match.push_back(invert);
        }
        spans.emplace_back(begin, end);
        is_match.push_back(!invert);
        last = end;
      }
      if (last < piece.text.size()) {
        spans.emplace_back(last, piece.text.size());
        is_match.push_back(invert);
      }
      // tokenizers' SplitDelimiterBehavior fold over (span, is_match).
      std::vector<std::pair<size_t, size_t>> parts;
      bool previous_match = false;
      for (size_t i = 0; i < spans.size(); ++i) {
        const bool extend = !parts.empty() && ((behavior == "MergedWithNext" && previous_match) ||
                                               (behavior == "MergedWithPrevious" && is_match[i] && !previous_match) ||
                                               (behavior == "Contiguous" && is_match[i] && previous_match));
        if (behavior == "Removed" && is_match[i]) {
          // dropped
        } else if (extend) {
          parts.back().second = spans[i].second;
        } else {
          parts.push_back(spans[i]);
        }
        previous_match = is_match[i];
      }
      for (const auto& [begin, end] : parts) out.push_back({piece.text.substr(begin, end - begin), piece.at_start && begin == 0});
    }
    return out;
  }

  void add_pre_tokenizer(const Json& spec, const std::string& where) {
    const std::string type = parser_.string(spec, "type", where);
    if (type == "Sequence") {
      for_each_item(spec, "pretokenizers", where, [&](const Json& item, const std::string& at) { add_pre_tokenizer(item, at); });
    } else if (type == "Split") {
      const auto [pattern, is_regex] = parser_.pattern(spec, where);
      const std::string behavior = parser_.string(spec, "behavior", where);
      const std::vector<std::string> known = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
      if (std::find(known.begin(), known.end(), behavior) == known.end()) parser_.unsupported(where + ".behavior", spec["behavior"]);
      auto regex = std::make_shared<Regex>(is_regex ? pattern : escape(pattern), parser_.file() + ": " + where);
      const bool invert = parser_.flag(spec, "invert", false);
      pre_tokenizers_.push_back([regex, behavior, invert](std::vector<Piece> pieces) { return split(pieces, *regex, behavior, invert); });
    } else if (type == "Digits") {
      auto regex = std::make_shared<Regex>(parser_.flag(spec, "individual_digits", false) ? "\\p{N}" : "\\p{N}+", where);
      pre_tokenizers_.push_back([regex](std::vector<Piece> pieces) { return split(pieces, *regex, "Isolated", false); });
    } else if (type == "ByteLevel") {
      const bool add_prefix_space = parser_.flag(spec, "add_prefix_space", false);
      std::shared_ptr<Regex> regex;
      if (parser_.flag(spec, "use_regex", true)) regex = std::make_shared<Regex>(kGpt2Pattern, where);
      pre_tokenizers_.push_back([regex, add_prefix_space](std::vector<Piece> pieces) {
        if (add_prefix_space) {
          for (Piece& piece : pieces) {
            if (piece.text.rfind(' ', 0) != 0) piece.text = " " + piece.text;
          }
        }
        if (regex) pieces = split(pieces, *regex, "Isolated", false);
        for (Piece& piece : pieces) {
          std::string mapped;
          for (const unsigned char byte : piece.text) mapped += byte_level_char(byte);
          piece.text = std::move(mapped);
        }
        return pieces;
      });
    } else if (type == "Metaspace") {
      const std::string replacement = parser_.string(spec, "replacement", where);
      const std::string scheme = spec.value("prepend_scheme", parser_.flag(spec, "add_prefix_space", true) ? "always" : "never");
      if (scheme != "always" && scheme != "first" && scheme != "never") parser_.unsupported(where + ".prepend_scheme", spec["prepend_scheme"]);
      const bool split_words = parser_.flag(spec, "split", true);
      auto regex = std::make_shared<Regex>(escape(replacement), where);
      pre_tokenizers_.push_back([=](std::vector<Piece> pieces) {
        for (Piece& piece : pieces) {
          piece.text = replace_all(piece.text, " ", replacement);
          const bool prepend = scheme == "always" || (scheme == "first" && piece.at_start);
          if (prepend && piece.text.rfind(replacement, 0) != 0) piece.text = replacement + piece.text;
        }
        return split_words ? split(pieces, *regex, "MergedWithNext", false) : pieces;
      });
    } else {
      parser_.unsupported(where, spec);
    }
  }

  // Byte-fallback bytes as text; invalid UTF-8 becomes one U+FFFD per byte, as in tokenizers.
  static void flush_bytes(std::string* bytes, std::vector<std::string>* out) {
    if (bytes->empty()) return;
    out->push_back(is_valid_utf8(*bytes) ? *bytes : [&] {
      std::string replaced;
      for (size_t i = 0; i < bytes->size(); ++i) replaced += "\xEF\xBF\xBD";
      return replaced;
    }());
    bytes->clear();
  }

  static std::string escape(const std::string& literal) { return "\\Q" + literal + "\\E"; }

  void add_decoder(const Json& spec, const std::string& where) {
    const std::string type = parser_.string(spec, "type", where);
    if (type == "Sequence") {
      for_each_item(spec, "decoders", where, [&](const Json& item, const std::string& at) { add_decoder(item, at); });
    } else if (type == "ByteLevel") {
      decoders_.push_back([](std::vector<std::string> tokens) {
        // A token with a character outside the byte alphabet (an added token's) is kept as
        // its UTF-8, whole, as tokenizers' ByteLevel decoder keeps it.
        std::string bytes;
        for (const auto& token : tokens) {
          std::string mapped;
          bool all_mapped = true;
          for (const auto& character : utf8_chars(token)) {
            const int byte = byte_level_byte(character);
            all_mapped = all_mapped && byte >= 0;
            if (!all_mapped) break;
            mapped += static_cast<char>(byte);
          }
          bytes += all_mapped ? mapped : token;
        }
        return std::vector<std::string>{bytes};
      });
    } else if (type == "Replace") {
      const auto [pattern, is_regex] = parser_.pattern(spec, where);
      if (is_regex) parser_.unsupported(where + ".pattern", spec["pattern"]);
      const std::string content = parser_.string(spec, "content", where);
      decoders_.push_back([pattern = pattern, content](std::vector<std::string> tokens) {
        for (auto& token : tokens) token = replace_all(std::move(token), pattern, content);
        return tokens;
      });
    } else if (type == "ByteFallback") {
      decoders_.push_back([](std::vector<std::string> tokens) {
        // Runs of <0xXX> tokens become their bytes.
        std::vector<std::string> out;
        std::string bytes;
        for (const auto& token : tokens) {
          if (token.size() == 6 && token.rfind("<0x", 0) == 0 && token[5] == '>') {
            bytes += static_cast<char>(std::stoi(token.substr(3, 2), nullptr, 16));
            continue;
          }
          flush_bytes(&bytes, &out);
          out.push_back(token);
        }
        flush_bytes(&bytes, &out);
        return out;
      });
    } else if (type == "Fuse") {
      decoders_.push_back([](std::vector<std::string> tokens) {
        std::string joined;
        for (const auto& token : tokens) joined += token;
        return std::vector<std::string>{joined};
      });
    } else if (type == "Strip") {
      const std::string content = parser_.string(spec, "content", where);
      const int64_t start = spec.value("start", 0), stop = spec.value("stop", 0);
      decoders_.push_back([content, start, stop](std::vector<std::string> tokens) {
        for (auto& token : tokens) {
          for (int64_t i = 0; i < start && token.rfind(content, 0) == 0; ++i) token.erase(0, content.size());
          for (int64_t i = 0; i < stop && token.size() >= content.size() &&
                              token.compare(token.size() - content.size(), content.size(), content) == 0;
               ++i) {
            token.erase(token.size() - content.size());
          }
        }
        return tokens;
      });
    } else if (type == "Metaspace") {
      const std::string replacement = parser_.string(spec, "replacement", where);
      const std::string scheme = spec.value("prepend_scheme", parser_.flag(spec, "add_prefix_space", true) ? "always" : "never");
      decoders_.push_back([replacement, scheme](std::vector<std::string> tokens) {
        for (size_t i = 0; i < tokens.size(); ++i) {
          tokens[i] = replace_all(tokens[i], replacement, " ");
          if (i == 0 && scheme != "never" && !tokens[i].empty() && tokens[i][0] == ' ') tokens[i].erase(0, 1);
        }
        return tokens;
      });
    } else {
      parser_.unsupported(where, spec);
    }
  }

  void parse_post_processor(const Json& spec, const std::string& where) {
    const std::string type = parser_.string(spec, "type", where);
    if (type == "Sequence") {
      for_each_item(spec, "processors", where, [&](const Json& item, const std::string& at) { parse_post_processor(item, at); });
    } else if (type == "TemplateProcessing") {
      const Json& single = parser_.field(spec, "single", where);
      bool seen_sequence = false;
      for (const Json& item : single) {
        if (item.contains("Sequence")) {
          seen_sequence = true;
          continue;
        }
        const std::string token = parser_.string(parser_.field(item, "SpecialToken", where + ".single"), "id", where + ".single");
        const auto id = token_id(token);
        SHARDLORA_CHECK(id, parser_.file(), ": ", where, " names '", token, "', which is not in the vocabulary");
        (seen_sequence ? template_suffix_ : template_prefix_).push_back(*id);
      }
    } else if (type != "ByteLevel") {  // ByteLevel only trims offsets
      parser_.unsupported(where, spec);
    }
  }

  // Normalizes, pre-tokenizes and BPE-encodes text that holds no added token.
  // The text between added tokens, section by section, until `ids` holds max_tokens.
  // tokenizers' order: added tokens matched in the raw text first; each section between
  // them normalized, then split at the added tokens matched in normalized text, the rest
  // pre-tokenized and BPE-encoded.
  void encode_sections(const std::string& text, size_t max_tokens, std::vector<int64_t>* ids) const {
    for_each_section(text, raw_added_by_first_byte_, max_tokens, ids, [&](const std::string& raw, bool at_start) {
      std::string normalized = raw;
      for (const Normalizer& normalizer : normalizers_) normalized = normalizer(std::move(normalized));
      for_each_section(normalized, normalized_added_by_first_byte_, max_tokens, ids,
                       [&](const std::string& section, bool first) { encode_section(section, at_start && first, max_tokens, ids); });
    });
  }

  // Calls encode(section, starts_the_text) on the text between the added tokens of `index`
  // and appends those tokens' ids, in order, until `ids` holds max_tokens.
  template <typename Encode>
  void for_each_section(const std::string& text, const AddedIndex& index, size_t max_tokens, std::vector<int64_t>* ids,
                        const Encode& encode) const {
    size_t start = 0;
    while (start < text.size() && ids->size() < max_tokens) {
      const AddedMatch match = next_added_token(text, start, index);
      if (match.begin > start) encode(text.substr(start, match.begin - start), start == 0);
      if (match.id < 0 || ids->size() >= max_tokens) break;
      ids->push_back(match.id);
      start = match.end;
    }
  }

  void encode_section(const std::string& text, bool at_start, size_t max_tokens, std::vector<int64_t>* ids) const {
    std::vector<Piece> pieces = {{text, at_start}};
    for (const PreTokenizer& pre_tokenizer : pre_tokenizers_) pieces = pre_tokenizer(std::move(pieces));
    for (const Piece& piece : pieces) {
      if (ids->size() >= max_tokens) return;
      if (!piece.text.empty()) encode_word(piece.text, max_tokens, ids);
    }
  }

  static std::string pair_key(const std::string& left, const std::string& right) { return left + '\x01' + right; }

  int64_t rank_of(const std::string& left, const std::string& right) const {
    const auto it = merge_ranks_.find(pair_key(left, right));
    return it == merge_ranks_.end() ? -1 : it->second;
  }

  // BPE with a priority queue of adjacent pairs: lowest rank first, leftmost on ties (as
  // tokenizers does); stale entries are recognised by re-checking the pair's rank.
  void encode_word(const std::string& word, size_t max_tokens, std::vector<int64_t>* ids) const {
    if (ignore_merges_) {
      // The model's vocabulary only: an added token's content is matched before BPE, or not at all.
      if (const auto it = vocab_.find(word); it != vocab_.end() && !added_only_.count(word)) {
        ids->push_back(it->second);
        return;
      }
    }
    if (merge_ranks_.empty()) {
      // Nothing merges (a byte- or character-level vocabulary): each symbol is a token, so
      // a word is encoded only as far as it is kept.
      bool last_was_unk = false;
      for (size_t at = 0; at < word.size() && ids->size() < max_tokens;) {
        const size_t length = std::min(utf8_length(static_cast<unsigned char>(word[at])), word.size() - at);
        emit_symbol(word.substr(at, length), &last_was_unk, ids);
        at += length;
      }
      return;
    }
    // Its merges need the whole word: BPE's working set is ~100 bytes a character.
    SHARDLORA_CHECK(word.size() <= kMaxWordBytes, parser_.file(), ": a single word of ", word.size(),
                    " bytes (no space or punctuation to split it at), over the ", kMaxWordBytes, "-byte limit: binary data?");
    // Words repeat: their ids are kept (as tokenizers' BPE cache does), short words only.
    const bool cacheable = word.size() <= kCachedWordBytes;
    if (cacheable) {
      const std::shared_lock<std::shared_mutex> lock(cache_mutex_);
      if (const auto it = word_cache_.find(word); it != word_cache_.end()) {
        ids->insert(ids->end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const size_t first_id = ids->size();
    merge_word(word, ids);
    if (cacheable) {
      const std::unique_lock<std::shared_mutex> lock(cache_mutex_);
      if (word_cache_.size() < kCachedWords) word_cache_.emplace(word, std::vector<int64_t>(ids->begin() + static_cast<std::ptrdiff_t>(first_id), ids->end()));
    }
  }

  // The merges of one word, its symbols' ids appended.
  void merge_word(const std::string& word, std::vector<int64_t>* ids) const {
    std::vector<std::string> symbols = utf8_chars(word);
    const int64_t n = static_cast<int64_t>(symbols.size());
    std::vector<int64_t> prev(n), next(n);
    for (int64_t i = 0; i < n; ++i) {
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    using Candidate = std::tuple<int64_t, int64_t, int64_t>;  // rank, left, right
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
    const auto push = [&](int64_t left, int64_t right) {
      if (left < 0 || right < 0) return;
      const int64_t rank = rank_of(symbols[left], symbols[right]);
      if (rank >= 0) queue.emplace(rank, left, right);
    };
    for (int64_t i = 0; i + 1 < n; ++i) push(i, i + 1);
    while (!queue.empty()) {
      const auto [rank, left, right] = queue.top();
      queue.pop();
      if (next[left] != right || symbols[left].empty() || symbols[right].empty() ||
          rank_of(symbols[left], symbols[right]) != rank) {
        continue;
      }
      symbols[left] += symbols[right];
      symbols[right].clear();
      next[left] = next[right];
      if (next[right] >= 0) prev[next[right]] = left;
      push(prev[left], left);
      push(left, next[left]);
    }
    bool last_was_unk = false;
    for (int64_t i = 0; i >= 0 && i < n; i = next[i]) emit_symbol(symbols[i], &last_was_unk, ids);
  }

  // A merged symbol's id: its vocabulary entry, else its bytes (byte_fallback), else unk
  // (consecutive unks fused into one with fuse_unk).
  void emit_symbol(const std::string& symbol, bool* last_was_unk, std::vector<int64_t>* ids) const {
    if (const auto it = vocab_.find(symbol); it != vocab_.end()) {
      ids->push_back(it->second);
      *last_was_unk = false;
      return;
    }
    if (byte_fallback_) {
      for (const unsigned char byte : symbol) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", byte);
        const auto byte_token = vocab_.find(name);
        SHARDLORA_CHECK(byte_token != vocab_.end(), parser_.file(), ": byte_fallback needs token ", name, " in the vocabulary");
        ids->push_back(byte_token->second);
      }
      *last_was_unk = false;
      return;
    }
    SHARDLORA_CHECK(unk_id_, parser_.file(), ": '", symbol, "' is not in the vocabulary and the model has no unk_token");
    if (!(fuse_unk_ && *last_was_unk)) ids->push_back(*unk_id_);
    *last_was_unk = true;
  }

  Parser parser_;
  std::unordered_map<std::string, int64_t> vocab_;
  int64_t entries_ = 0;  // vocab and added tokens in the file: bounds the ids (add_vocab)
  static constexpr size_t kMaxWordBytes = 1 << 20;
  static constexpr size_t kCachedWordBytes = 256, kCachedWords = 1 << 16;
  mutable std::shared_mutex cache_mutex_;  // lookups from many threads, inserts from one at a time
  mutable std::unordered_map<std::string, std::vector<int64_t>> word_cache_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, int64_t> merge_ranks_;
  std::optional<int64_t> unk_id_;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  std::unordered_set<std::string> added_only_;  // added tokens the model's vocabulary lacks
  std::vector<AddedToken> added_tokens_;
  std::unordered_map<int64_t, int64_t> added_index_;  // id -> index in added_tokens_
  AddedIndex raw_added_by_first_byte_, normalized_added_by_first_byte_;  // indices into added_tokens_
  std::vector<Normalizer> normalizers_;
  std::vector<PreTokenizer> pre_tokenizers_;
  std::vector<Decoder> decoders_;
  std::vector<int64_t> template_prefix_, template_suffix_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const nlohmann::json& json, const std::string& file) {
  return std::make_unique<BpeTokenizer>(json, file);
}

}  // namespace shardlora::data
