// A C interface to libsentencepiece, built as a separate module that the framework loads
// with dlopen(RTLD_LOCAL | RTLD_DEEPBIND). Debian's libsentencepiece carries its own copy of
// protobuf-lite with exported symbols; linked into a process that also loads libtorch's
// libprotobuf, the two copies interpose and the process crashes while loading. Kept local
// and bound deep, each library resolves protobuf to its own copy.
#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

void set_error(char* error, size_t size, const std::string& message) {
  if (size == 0) return;
  std::strncpy(error, message.c_str(), size - 1);
  error[size - 1] = '\0';
}

}  // namespace

extern "C" {

void* shardlora_spm_open(const char* path, char* error, size_t error_size) {
  auto* processor = new sentencepiece::SentencePieceProcessor();
  const auto status = processor->Load(path);
  if (!status.ok()) {
    set_error(error, error_size, status.ToString());
    delete processor;
    return nullptr;
  }
  return processor;
}

void shardlora_spm_close(void* handle) { delete static_cast<sentencepiece::SentencePieceProcessor*>(handle); }

// ids: malloc'ed, freed by the caller with shardlora_spm_free. Returns 0 on success.
int shardlora_spm_encode(void* handle, const char* text, size_t length, int** ids, size_t* count, char* error, size_t error_size) {
  std::vector<int> pieces;
  const auto status = static_cast<sentencepiece::SentencePieceProcessor*>(handle)->Encode(std::string(text, length), &pieces);
  if (!status.ok()) {
    set_error(error, error_size, status.ToString());
    return 1;
  }
  *count = pieces.size();
  *ids = static_cast<int*>(std::malloc(std::max<size_t>(1, pieces.size()) * sizeof(int)));
  std::memcpy(*ids, pieces.data(), pieces.size() * sizeof(int));
  return 0;
}

int shardlora_spm_decode(void* handle, const int* ids, size_t count, char** text, size_t* length, char* error, size_t error_size) {
  std::string decoded;
  const auto status =
      static_cast<sentencepiece::SentencePieceProcessor*>(handle)->Decode(std::vector<int>(ids, ids + count), &decoded);
  if (!status.ok()) {
    set_error(error, error_size, status.ToString());
    return 1;
  }
  *length = decoded.size();
  *text = static_cast<char*>(std::malloc(decoded.size() + 1));
  std::memcpy(*text, decoded.c_str(), decoded.size() + 1);
  return 0;
}

void shardlora_spm_free(void* pointer) { std::free(pointer); }

// kind: 0 vocabulary size, 1 bos, 2 eos, 3 pad, 4 unk.
int shardlora_spm_special(void* handle, int kind) {
  const auto* processor = static_cast<sentencepiece::SentencePieceProcessor*>(handle);
  switch (kind) {
    case 0: return processor->GetPieceSize();
    case 1: return processor->bos_id();
    case 2: return processor->eos_id();
    case 3: return processor->pad_id();
    default: return processor->unk_id();
  }
}

int shardlora_spm_piece_to_id(void* handle, const char* piece) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(handle)->PieceToId(piece);
}

// 1 when the id's piece equals `piece` (PieceToId maps unknown pieces to unk).
int shardlora_spm_is_piece(void* handle, int id, const char* piece) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(handle)->IdToPiece(id) == piece;
}

int shardlora_spm_is_control(void* handle, int id) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(handle)->IsControl(id);
}

}  // extern "C"
