#include "shardlora/data/dataset.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "shardlora/data/utf8.h"
#include "shardlora/io/durable_file.h"
#include "shardlora/kernels/check.h"
#include "shardlora/util/parallel_tasks.h"

namespace shardlora::data {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;  // key order kept: a template's tojson writes the tools as given

constexpr char kIndexMagic[8] = {'S', 'L', 'I', 'D', 'X', '0', '0', '1'};

// A sample's bytes in the file and the 1-based line it starts on.
struct Span {
  uint64_t begin, end, line;
};

// One pass over the file in 1 MiB reads, calling visit(byte, offset) for each byte.
template <typename Visit>
void scan(const std::string& path, Visit visit) {
  std::ifstream in(path, std::ios::binary);
  SHARDLORA_CHECK(in, path, ": cannot open");
  std::vector<char> buffer(1 << 20);
  uint64_t offset = 0;
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const auto got = static_cast<size_t>(in.gcount());
    for (size_t i = 0; i < got; ++i) visit(buffer[i], offset + i);
    offset += got;
  }
}

bool blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// One line's non-blank bytes as seen by one chunk of the file: first is kNoContent when
// the chunk holds none of them (a line split by a chunk boundary has two parts).
struct LinePart {
  static constexpr uint64_t kNoContent = UINT64_MAX;
  uint64_t first = kNoContent, last = 0;

  void extend(const LinePart& later) {
    if (later.first == kNoContent) return;
    if (first == kNoContent) first = later.first;
    last = later.last;
  }
};

// The parts of the lines in bytes [begin, end) of the file: one per newline in the range,
// then the part after the last newline.
std::vector<LinePart> line_parts(int fd, const std::string& path, uint64_t begin, uint64_t end) {
  std::vector<LinePart> parts(1);
  std::vector<char> buffer(1 << 20);
  for (uint64_t at = begin; at < end;) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(buffer.size(), end - at));
    const ssize_t got = ::pread(fd, buffer.data(), want, static_cast<off_t>(at));
    SHARDLORA_CHECK(got == static_cast<ssize_t>(want), path, ": short read while indexing (the file changed?)");
    const char* const data = buffer.data();
    for (size_t from = 0; from < want;) {
      const auto* newline = static_cast<const char*>(std::memchr(data + from, '\n', want - from));
      const size_t to = newline ? static_cast<size_t>(newline - data) : want;
      // Records start and end with non-blank bytes next to the line's ends: a short search.
      size_t first = from, last = to;
      while (first < to && blank(data[first])) ++first;
      while (last > first && blank(data[last - 1])) --last;
      if (first < to) parts.back().extend({at + first, at + last - 1});
      if (!newline) break;
      parts.emplace_back();
      from = to + 1;
    }
    at += want;
  }
  return parts;
}

// Non-blank lines of a JSONL file (trailing \r and spaces excluded), the file cut into one
// chunk per thread (at least 4 MiB each) and the lines split by a cut joined again.
std::vector<Span> index_lines(int fd, const std::string& path, uint64_t size, int threads) {
  constexpr uint64_t kMinChunk = 4 << 20;
  const auto chunks = static_cast<int64_t>(std::clamp<uint64_t>(size / kMinChunk, 1, static_cast<uint64_t>(resolve_task_threads(threads))));
  std::vector<std::vector<LinePart>> parts(static_cast<size_t>(chunks));
  run_parallel_tasks(chunks, threads, [&](int64_t c) {
    parts[static_cast<size_t>(c)] = line_parts(fd, path, size * c / chunks, size * (c + 1) / chunks);
  });
  std::vector<Span> spans;
  uint64_t line = 1;
  LinePart current;
  const auto finish_line = [&] {
    if (current.first != LinePart::kNoContent) spans.push_back({current.first, current.last + 1, line});
    ++line;
    current = {};
  };
  for (const std::vector<LinePart>& chunk : parts) {
    current.extend(chunk.front());
    for (size_t i = 1; i < chunk.size(); ++i) {
      finish_line();
      current = chunk[i];
    }
  }
  finish_line();
  return spans;
}

// The top-level elements of a JSON array, found by tracking strings and nesting depth.
std::vector<Span> index_array(const std::string& path) {
  std::vector<Span> spans;
  int depth = 0;
  bool in_string = false, escaped = false, has_element = false, closed = false;
  uint64_t line = 1, start = 0, start_line = 1, last_content = 0;
  scan(path, [&](char c, uint64_t offset) {
    if (c == '\n') ++line;
    if (closed) {
      SHARDLORA_CHECK(blank(c), path, ":", line, ": text after the closing ] of the array");
      return;
    }
    if (in_string) {
      last_content = offset;
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      return;
    }
    if (blank(c)) return;
    if (depth == 0) {
      SHARDLORA_CHECK(c == '[', path, ":", line, ": a .json dataset must be an array of records");
      depth = 1;
      return;
    }
    if (depth == 1 && (c == ',' || c == ']')) {
      if (has_element) spans.push_back({start, last_content + 1, start_line});
      SHARDLORA_CHECK(has_element || c == ']', path, ":", line, ": empty element in the array");
      has_element = false;
      if (c == ']') closed = true;
      depth -= c == ']';
      return;
    }
    if (!has_element) {
      has_element = true;
      start = offset;
      start_line = line;
    }
    last_content = offset;
    if (c == '"') in_string = true;
    if (c == '{' || c == '[') ++depth;
    if (c == '}' || c == ']') --depth;
  });
  SHARDLORA_CHECK(closed, path, ": the JSON array is not closed");
  return spans;
}

int64_t mtime_ns(const std::string& path) {
  return static_cast<int64_t>(fs::last_write_time(path).time_since_epoch().count());
}

// The cached index, if it matches the file's size and mtime.
std::optional<std::vector<Span>> read_index(const std::string& index_path, uint64_t size, int64_t mtime) {
  std::ifstream in(index_path, std::ios::binary);
  if (!in) return std::nullopt;
  char magic[8];
  uint64_t cached_size = 0, count = 0;
  int64_t cached_mtime = 0;
  in.read(magic, 8);
  in.read(reinterpret_cast<char*>(&cached_size), 8);
  in.read(reinterpret_cast<char*>(&cached_mtime), 8);
  in.read(reinterpret_cast<char*>(&count), 8);
  if (!in || std::memcmp(magic, kIndexMagic, 8) != 0 || cached_size != size || cached_mtime != mtime) return std::nullopt;
  if (count > size) return std::nullopt;  // a sample takes at least one byte
  std::vector<Span> spans(count);
  in.read(reinterpret_cast<char*>(spans.data()), static_cast<std::streamsize>(count * sizeof(Span)));
  if (!in) return std::nullopt;
  for (const Span& span : spans) {
    if (span.begin >= span.end || span.end > size) return std::nullopt;
  }
  return spans;
}

// Written durably beside the data; a directory we cannot write to (or a full disk) only costs the cache.
void write_index(const std::string& index_path, uint64_t size, int64_t mtime, const std::vector<Span>& spans) {
  try {
    io::DurableFile out(index_path);
    const uint64_t count = spans.size();
    out.write(kIndexMagic, 8);
    out.write(&size, 8);
    out.write(&mtime, 8);
    out.write(&count, 8);
    out.write(spans.data(), count * sizeof(Span));
    out.publish();
  } catch (const Error&) {
  }
}

const Json& require(const Json& record, const std::string& key, const std::string& where) {
  const auto it = record.find(key);
  SHARDLORA_CHECK(it != record.end() && !it->is_null(), where, ": key '", key, "' is missing");
  return *it;
}

std::string require_string(const Json& record, const std::string& key, const std::string& where) {
  const Json& value = require(record, key, where);
  SHARDLORA_CHECK(value.is_string(), where, ": key '", key, "' must be a string, found ", value.type_name());
  return value.get<std::string>();
}

std::vector<int64_t> token_list(const Json& value, const std::string& key, const std::string& where, int64_t vocab,
                                bool allow_ignore) {
  SHARDLORA_CHECK(value.is_array(), where, ": key '", key, "' must be a list of token ids");
  std::vector<int64_t> ids;
  for (const Json& id : value) {
    const bool ok = id.is_number_integer() &&
                    ((id.get<int64_t>() >= 0 && id.get<int64_t>() < vocab) || (allow_ignore && id.get<int64_t>() == kIgnoreIndex));
    SHARDLORA_CHECK(ok, where, ": key '", key, "' holds ", id.dump(), ", not a token id in [0, ", vocab, ")");
    ids.push_back(id.get<int64_t>());
  }
  return ids;
}

}  // namespace

DatasetFormat dataset_format_from_name(const std::string& name) {
  if (name == "alpaca") return DatasetFormat::Alpaca;
  if (name == "chat") return DatasetFormat::Chat;
  if (name == "text") return DatasetFormat::Text;
  if (name == "tokenized") return DatasetFormat::Tokenized;
  throw Error("unknown dataset format '" + name + "' (alpaca, chat, text, tokenized)");
}

struct Dataset::Source {
  std::string path;              // the file, or the directory of .txt files
  bool lines = false;            // JSONL (else a JSON array) when `files` is empty
  std::vector<Span> spans;
  std::vector<std::string> files;
  int fd = -1;

  ~Source() {
    if (fd >= 0) ::close(fd);
  }
};

Dataset::Dataset(DatasetOptions options) : options_(std::move(options)), source_(std::make_unique<Source>()) {
  Source& source = *source_;
  source.path = options_.path;
  SHARDLORA_CHECK(fs::exists(source.path), source.path, ": no such file or directory");
  if (fs::is_directory(source.path)) {
    for (const auto& entry : fs::directory_iterator(source.path)) {
      if (entry.is_regular_file() && entry.path().extension() == ".txt") source.files.push_back(entry.path().string());
    }
    std::sort(source.files.begin(), source.files.end());
    SHARDLORA_CHECK(!source.files.empty(), source.path, ": the directory holds no .txt files");
    return;
  }
  const std::string extension = fs::path(source.path).extension().string();
  SHARDLORA_CHECK(extension == ".jsonl" || extension == ".json", source.path,
                  ": a dataset is a .jsonl or .json file or a directory of .txt files");
  source.lines = extension == ".jsonl";
  const uint64_t size = fs::file_size(source.path);
  const int64_t mtime = mtime_ns(source.path);
  const fs::path cache_dir = options_.cache_dir.empty() ? fs::path(source.path).parent_path() : fs::path(options_.cache_dir);
  const std::string index_path = (cache_dir / (fs::path(source.path).filename().string() + ".shardlora-index")).string();
  source.fd = ::open(source.path.c_str(), O_RDONLY | O_CLOEXEC);
  SHARDLORA_CHECK(source.fd >= 0, source.path, ": cannot open: ", std::strerror(errno));
  if (auto cached = read_index(index_path, size, mtime)) {
    source.spans = std::move(*cached);
  } else {
    source.spans = source.lines ? index_lines(source.fd, source.path, size, options_.threads) : index_array(source.path);
    write_index(index_path, size, mtime, source.spans);
  }
  SHARDLORA_CHECK(!source.spans.empty(), source.path, ": the dataset holds no records");
}

Dataset::~Dataset() = default;
Dataset::Dataset(Dataset&&) noexcept = default;
Dataset& Dataset::operator=(Dataset&&) noexcept = default;

int64_t Dataset::size() const {
  return static_cast<int64_t>(source_->files.empty() ? source_->spans.size() : source_->files.size());
}

std::string Dataset::location(int64_t index) const {
  SHARDLORA_CHECK(index >= 0 && index < size(), "dataset ", options_.path, ": sample ", index, " out of range [0, ", size(), ")");
  if (!source_->files.empty()) return source_->files[static_cast<size_t>(index)];
  if (source_->lines) return source_->path + ":" + std::to_string(source_->spans[static_cast<size_t>(index)].line);
  return source_->path + "[" + std::to_string(index) + "] (line " + std::to_string(source_->spans[static_cast<size_t>(index)].line) + ")";
}

std::string Dataset::record(int64_t index) const {
  const std::string where = location(index);
  if (!source_->files.empty()) {
    std::ifstream in(where, std::ios::binary);
    SHARDLORA_CHECK(in, where, ": cannot open");
    std::string text(std::istreambuf_iterator<char>(in), {});
    SHARDLORA_CHECK(text.find('\0') == std::string::npos && is_valid_utf8(text), where,
                    ": not UTF-8 text (a binary file among the .txt files?)");
    return text;
  }
  const Span& span = source_->spans[static_cast<size_t>(index)];
  std::string bytes(span.end - span.begin, '\0');
  const ssize_t got = ::pread(source_->fd, bytes.data(), bytes.size(), static_cast<off_t>(span.begin));
  SHARDLORA_CHECK(got == static_cast<ssize_t>(bytes.size()), where, ": short read (the file changed since it was indexed?)");
  return bytes;
}

std::vector<Message> Dataset::conversation(const Json& json, const std::string& where,
                                           const ChatTemplate& chat_template) const {
  const FieldMap& f = options_.fields;
  if (options_.format == DatasetFormat::Alpaca) {
    std::string user = require_string(json, f.instruction, where);
    if (json.contains(f.input) && json[f.input].is_string() && !json[f.input].get<std::string>().empty()) {
      user += chat_template.input_separator + json[f.input].get<std::string>();
    }
    return {{"user", user}, {"assistant", require_string(json, f.output, where)}};
  }
  const Json& list = require(json, f.messages, where);
  SHARDLORA_CHECK(list.is_array() && !list.empty(), where, ": key '", f.messages, "' must be a non-empty list of messages");
  std::vector<Message> messages;
  for (size_t m = 0; m < list.size(); ++m) {
    const std::string at = where + ": " + f.messages + "[" + std::to_string(m) + "]";
    SHARDLORA_CHECK(list[m].is_object(), at, " must be an object");
    Message message;
    message.role = require_string(list[m], f.role, at);
    // A turn of tool calls may have a null content (OpenAI's and HF datasets' convention).
    const auto content = list[m].find(f.content);
    message.null_content = content != list[m].end() && content->is_null() && list[m].contains("tool_calls");
    if (!message.null_content) message.content = require_string(list[m], f.content, at);
    if (chat_template.jinja) {  // only a Jinja template reads the message's other keys
      Json extra = Json::object();
      for (const auto& [key, value] : list[m].items()) {
        if (key != f.role && key != f.content) extra[key] = value;
      }
      if (!extra.empty()) message.extra = std::make_shared<const Json>(std::move(extra));
    }
    messages.push_back(std::move(message));
  }
  return messages;
}

Json Dataset::parsed_record(int64_t index) const {
  const std::string where = location(index);
  Json json;
  try {
    json = Json::parse(record(index));
  } catch (const Json::exception& error) {
    throw Error(where + ": invalid JSON: " + error.what());
  }
  SHARDLORA_CHECK(json.is_object(), where, ": a record must be a JSON object");
  return json;
}

std::vector<Message> Dataset::messages(int64_t index, const ChatTemplate& chat_template) const {
  SHARDLORA_CHECK(source_->files.empty() && (options_.format == DatasetFormat::Alpaca || options_.format == DatasetFormat::Chat),
                  options_.path, ": only alpaca and chat datasets hold conversations");
  return conversation(parsed_record(index), location(index), chat_template);
}

Example Dataset::example(int64_t index, const Tokenizer& tokenizer, const PromptOptions& prompt) const {
  const std::string where = location(index);
  if (!source_->files.empty()) return tokenize_text(tokenizer, record(index), prompt.max_tokens);
  const Json json = parsed_record(index);
  const FieldMap& f = options_.fields;
  Example example;
  switch (options_.format) {
    case DatasetFormat::Text:
      example = tokenize_text(tokenizer, require_string(json, f.text, where), prompt.max_tokens);
      break;
    case DatasetFormat::Tokenized: {
      example.input_ids = token_list(require(json, f.input_ids, where), f.input_ids, where, tokenizer.vocab_size(), false);
      example.labels = json.contains(f.labels) ? token_list(json[f.labels], f.labels, where, tokenizer.vocab_size(), true)
                                               : example.input_ids;
      SHARDLORA_CHECK(example.labels.size() == example.input_ids.size(), where, ": key '", f.labels, "' has ",
                      example.labels.size(), " entries, '", f.input_ids, "' ", example.input_ids.size());
      break;
    }
    case DatasetFormat::Alpaca:
    case DatasetFormat::Chat: {
      SHARDLORA_CHECK(prompt.chat_template, where, ": the ", options_.format == DatasetFormat::Chat ? "chat" : "alpaca",
                      " format needs a chat template");
      const std::vector<Message> messages = conversation(json, where, *prompt.chat_template);
      try {
        // A record's "tools" list is the template's `tools` (function definitions, as in HF datasets).
        const auto tools = json.find("tools");
        const Json* tool_list = tools != json.end() && tools->is_array() ? &*tools : nullptr;
        example = tokenize_segments(tokenizer, render_chat(*prompt.chat_template, messages, true, tool_list), prompt.train_on_prompt,
                                    prompt.max_tokens);
      } catch (const Error& error) {
        throw Error(where + ": " + error.what());
      }
      break;
    }
  }
  SHARDLORA_CHECK(!example.input_ids.empty(), where, ": the record yields no tokens");
  return example;
}

std::vector<PreparedExample> prepare_examples(const Dataset& dataset, const std::vector<int64_t>& indices, const Tokenizer& tokenizer,
                                              const PromptOptions& prompt, int threads) {
  std::vector<PreparedExample> prepared(indices.size());
  run_parallel_tasks(static_cast<int64_t>(indices.size()), threads, [&](int64_t i) {
    PreparedExample& out = prepared[static_cast<size_t>(i)];
    try {
      out.example = dataset.example(indices[static_cast<size_t>(i)], tokenizer, prompt);
    } catch (const Error& error) {
      out.error = error.what();
    }
  });
  return prepared;
}

void split_indices(int64_t count, double fraction, uint64_t seed, std::vector<int64_t>* train, std::vector<int64_t>* validation) {
  SHARDLORA_CHECK(fraction >= 0 && fraction < 1, "validation fraction must be in [0, 1), found ", fraction);
  train->clear();
  validation->clear();
  for (int64_t i = 0; i < count; ++i) {
    // splitmix64 of (seed, index): a fixed, well-mixed hash.
    uint64_t z = seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(i) + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    (static_cast<double>(z >> 11) * 0x1p-53 < fraction ? validation : train)->push_back(i);
  }
}

}  // namespace shardlora::data
