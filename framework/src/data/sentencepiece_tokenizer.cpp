// tokenizer.model through libsentencepiece, loaded at run time as a module (see
// sentencepiece_module.cpp for why it is not linked).
#include <dlfcn.h>

#include <cstdlib>

#include "bpe_tokenizer.h"
#include "shardlora/kernels/check.h"

namespace shardlora::data {
namespace {

// The module's entry points, resolved once per process.
struct SentencePieceModule {
  void* (*open)(const char*, char*, size_t);
  void (*close)(void*);
  int (*encode)(void*, const char*, size_t, int**, size_t*, char*, size_t);
  int (*decode)(void*, const int*, size_t, char**, size_t*, char*, size_t);
  void (*free)(void*);
  int (*special)(void*, int);
  int (*piece_to_id)(void*, const char*);
  int (*is_piece)(void*, int, const char*);
  int (*is_control)(void*, int);

  static const SentencePieceModule& get() {
    static const SentencePieceModule module = load();
    return module;
  }

 private:
  static SentencePieceModule load() {
    const char* override_path = std::getenv("SHARDLORA_SENTENCEPIECE_MODULE");
    const std::string path = override_path ? override_path : SHARDLORA_SENTENCEPIECE_MODULE;
    void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    SHARDLORA_CHECK(library, "cannot load the SentencePiece module ", path, ": ", dlerror(),
                    " (set SHARDLORA_SENTENCEPIECE_MODULE to its path)");
    const auto symbol = [&](const char* name) {
      void* address = dlsym(library, name);
      SHARDLORA_CHECK(address, path, ": missing symbol ", name);
      return address;
    };
    SentencePieceModule module;
    module.open = reinterpret_cast<decltype(module.open)>(symbol("shardlora_spm_open"));
    module.close = reinterpret_cast<decltype(module.close)>(symbol("shardlora_spm_close"));
    module.encode = reinterpret_cast<decltype(module.encode)>(symbol("shardlora_spm_encode"));
    module.decode = reinterpret_cast<decltype(module.decode)>(symbol("shardlora_spm_decode"));
    module.free = reinterpret_cast<decltype(module.free)>(symbol("shardlora_spm_free"));
    module.special = reinterpret_cast<decltype(module.special)>(symbol("shardlora_spm_special"));
    module.piece_to_id = reinterpret_cast<decltype(module.piece_to_id)>(symbol("shardlora_spm_piece_to_id"));
    module.is_piece = reinterpret_cast<decltype(module.is_piece)>(symbol("shardlora_spm_is_piece"));
    module.is_control = reinterpret_cast<decltype(module.is_control)>(symbol("shardlora_spm_is_control"));
    return module;
  }
};

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& file) : module_(SentencePieceModule::get()) {
    char error[512] = "";
    handle_ = module_.open(file.c_str(), error, sizeof error);
    SHARDLORA_CHECK(handle_, file, ": not a SentencePiece model: ", error);
    const auto id = [&](int kind) {
      const int value = module_.special(handle_, kind);
      return value >= 0 ? std::optional<int64_t>(value) : std::nullopt;
    };
    special_.bos = id(1);
    special_.eos = id(2);
    special_.pad = id(3);
    special_.add_bos = special_.bos.has_value();  // SentencePiece Llama tokenizers start with bos
  }
  ~SentencePieceTokenizer() override { module_.close(handle_); }
  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;

  std::vector<int64_t> encode(const std::string& text, bool add_special_tokens) const override {
    int* pieces = nullptr;
    size_t count = 0;
    char error[512] = "";
    SHARDLORA_CHECK(module_.encode(handle_, text.data(), text.size(), &pieces, &count, error, sizeof error) == 0,
                    "SentencePiece encode: ", error);
    std::vector<int64_t> ids;
    if (add_special_tokens && special_.add_bos) ids.push_back(*special_.bos);
    ids.insert(ids.end(), pieces, pieces + count);
    module_.free(pieces);
    return ids;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const override {
    std::vector<int> pieces;
    for (const int64_t id : ids) {
      SHARDLORA_CHECK(id >= 0 && id < vocab_size(), "decode: token id ", id, " is outside the vocabulary [0, ", vocab_size(), ")");
      if (skip_special && module_.is_control(handle_, static_cast<int>(id))) continue;
      pieces.push_back(static_cast<int>(id));
    }
    char* text = nullptr;
    size_t length = 0;
    char error[512] = "";
    SHARDLORA_CHECK(module_.decode(handle_, pieces.data(), pieces.size(), &text, &length, error, sizeof error) == 0,
                    "SentencePiece decode: ", error);
    std::string decoded(text, length);
    module_.free(text);
    return decoded;
  }

  int64_t vocab_size() const override { return module_.special(handle_, 0); }

  std::optional<int64_t> token_id(const std::string& token) const override {
    const int id = module_.piece_to_id(handle_, token.c_str());
    if (!module_.is_piece(handle_, id, token.c_str())) return std::nullopt;
    return id;
  }

 private:
  const SentencePieceModule& module_;
  void* handle_ = nullptr;
};

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::string& file) {
  return std::make_unique<SentencePieceTokenizer>(file);
}

}  // namespace shardlora::data
