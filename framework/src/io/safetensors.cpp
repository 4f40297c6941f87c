#include "shardlora/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "shardlora/kernels/check.h"

namespace shardlora::io {
namespace {

using nlohmann::json;

struct DTypeSize {
  const char* name;
  size_t bytes;
};

constexpr DTypeSize kDTypes[] = {{"BOOL", 1}, {"U8", 1},  {"I8", 1},       {"F8_E4M3", 1}, {"F8_E5M2", 1},
                                 {"U16", 2},  {"I16", 2}, {"F16", 2},      {"BF16", 2},    {"U32", 4},
                                 {"I32", 4},  {"F32", 4}, {"U64", 8},      {"I64", 8},     {"F64", 8}};

// Element count of a shape, or an error when a dimension is negative or the product overflows.
int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& where) {
  int64_t numel = 1;
  for (const int64_t dim : shape) {
    SHARDLORA_CHECK(dim >= 0, where, ": negative dimension ", dim);
    SHARDLORA_CHECK(dim == 0 || numel <= std::numeric_limits<int64_t>::max() / dim, where, ": shape overflows");
    numel *= dim;
  }
  return numel;
}

std::string system_error(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

// A SAX handler that notes the first top-level key seen twice.
struct TopLevelKeys : nlohmann::json_sax<json> {
  int depth = 0;
  std::set<std::string> names;
  std::string duplicate;

  bool key(string_t& name) override {
    if (depth == 1 && duplicate.empty() && !names.insert(name).second) duplicate = name;
    return true;
  }
  bool start_object(std::size_t) override { return ++depth, true; }
  bool end_object() override { return --depth, true; }
  bool start_array(std::size_t) override { return ++depth, true; }
  bool end_array() override { return --depth, true; }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }
};

}  // namespace

size_t safetensors_dtype_size(const std::string& dtype) {
  for (const auto& entry : kDTypes) {
    if (dtype == entry.name) return entry.bytes;
  }
  return 0;
}

int64_t TensorInfo::numel() const { return checked_numel(shape, name); }

const TensorInfo* SafetensorsHeader::find(const std::string& name) const {
  const auto found = index.find(name);
  return found == index.end() ? nullptr : &tensors[found->second];
}

SafetensorsHeader parse_safetensors_header(const uint8_t* file, uint64_t file_bytes, const std::string& label) {
  SHARDLORA_CHECK(file_bytes >= 8, label, ": not a safetensors file (", file_bytes, " bytes, shorter than the header length)");
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = header_bytes << 8 | file[i];
  SHARDLORA_CHECK(header_bytes <= kMaxSafetensorsHeaderBytes, label, ": header length ", header_bytes,
                  " exceeds the limit of ", kMaxSafetensorsHeaderBytes, " bytes");
  SHARDLORA_CHECK(header_bytes <= file_bytes - 8, label, ": truncated: header length ", header_bytes,
                  " but only ", file_bytes - 8, " bytes follow");
  SHARDLORA_CHECK(header_bytes >= 2 && file[8] == '{', label, ": header is not a JSON object");

  // Reject duplicate top-level names: nlohmann would silently keep the last one. Found by a
  // SAX pass of our own: nlohmann's callback parser rescans the whole object at the end of
  // every entry, quadratic in the entries (40 s for 50,000).
  const auto* text = reinterpret_cast<const char*>(file + 8);
  TopLevelKeys keys;
  SHARDLORA_CHECK(json::sax_parse(text, text + header_bytes, &keys, json::input_format_t::json, /*strict=*/true), label,
                  ": header is not valid JSON");
  SHARDLORA_CHECK(keys.duplicate.empty(), label, ": tensor '", keys.duplicate, "' appears twice in the header");
  const json header = json::parse(text, text + header_bytes, nullptr, /*allow_exceptions=*/false);
  SHARDLORA_CHECK(!header.is_discarded() && header.is_object(), label, ": header is not valid JSON");

  SafetensorsHeader result;
  result.header_bytes = header_bytes;
  result.data_bytes = file_bytes - 8 - header_bytes;
  for (const auto& [name, entry] : header.items()) {
    const std::string where = label + ": tensor '" + name + "'";
    if (name == "__metadata__") {
      SHARDLORA_CHECK(entry.is_object(), label, ": __metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        SHARDLORA_CHECK(value.is_string(), label, ": __metadata__ value of '", key, "' is not a string");
        result.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    SHARDLORA_CHECK(entry.is_object(), where, ": entry is not an object");
    for (const auto& [key, value] : entry.items()) {
      SHARDLORA_CHECK(key == "dtype" || key == "shape" || key == "data_offsets", where, ": unexpected field '", key, "'");
    }
    TensorInfo tensor;
    tensor.name = name;
    const auto dtype = entry.find("dtype");
    SHARDLORA_CHECK(dtype != entry.end() && dtype->is_string(), where, ": missing dtype");
    tensor.dtype = dtype->get<std::string>();
    const size_t element_bytes = safetensors_dtype_size(tensor.dtype);
    SHARDLORA_CHECK(element_bytes > 0, where, ": unknown dtype '", tensor.dtype, "'");
    const auto shape = entry.find("shape");
    SHARDLORA_CHECK(shape != entry.end() && shape->is_array(), where, ": missing shape");
    for (const auto& dim : *shape) {
      SHARDLORA_CHECK(dim.is_number_unsigned(), where, ": shape has a non-integer or negative dimension");
      SHARDLORA_CHECK(dim.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), where,
                      ": dimension too large");
      tensor.shape.push_back(dim.get<int64_t>());
    }
    const auto offsets = entry.find("data_offsets");
    SHARDLORA_CHECK(offsets != entry.end() && offsets->is_array() && offsets->size() == 2 &&
                        (*offsets)[0].is_number_unsigned() && (*offsets)[1].is_number_unsigned(),
                    where, ": data_offsets is not a pair of non-negative integers");
    tensor.begin = (*offsets)[0].get<uint64_t>();
    tensor.end = (*offsets)[1].get<uint64_t>();
    SHARDLORA_CHECK(tensor.begin <= tensor.end, where, ": data_offsets end before they begin");
    SHARDLORA_CHECK(tensor.end <= result.data_bytes, where, ": data ends at byte ", tensor.end,
                    " of a data section of ", result.data_bytes, " bytes (truncated file?)");
    const auto numel = static_cast<uint64_t>(checked_numel(tensor.shape, where));
    SHARDLORA_CHECK(numel <= std::numeric_limits<uint64_t>::max() / element_bytes &&
                        numel * element_bytes == tensor.end - tensor.begin,
                    where, ": ", tensor.end - tensor.begin, " bytes of data for a ", tensor.dtype, " tensor of ",
                    numel, " elements");
    result.tensors.push_back(std::move(tensor));
  }
  std::sort(result.tensors.begin(), result.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  for (const auto& tensor : result.tensors) {
    SHARDLORA_CHECK(tensor.begin == expected, label, ": tensor '", tensor.name, "' starts at byte ", tensor.begin,
                    " but the previous one ends at ", expected, " (overlapping or gapped data)");
    expected = tensor.end;
  }
  for (size_t i = 0; i < result.tensors.size(); ++i) result.index[result.tensors[i].name] = i;
  SHARDLORA_CHECK(expected == result.data_bytes, label, ": the tensors cover ", expected, " of ", result.data_bytes,
                  " data bytes (trailing garbage or missing entries)");
  return result;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  SHARDLORA_CHECK(fd >= 0, system_error("cannot open", path));
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    ::close(fd);
    throw Error(system_error("cannot stat", path));
  }
  if (!S_ISREG(info.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  map_bytes_ = static_cast<uint64_t>(info.st_size);
  if (map_bytes_ > 0) {
    void* map = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      ::close(fd);
      throw Error(system_error("cannot map", path));
    }
    map_ = static_cast<const uint8_t*>(map);
  }
  ::close(fd);
  try {
    header_ = parse_safetensors_header(map_, map_bytes_, path);
  } catch (...) {
    if (map_) ::munmap(const_cast<uint8_t*>(map_), map_bytes_);
    throw;
  }
  data_section_ = map_ + 8 + header_.header_bytes;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_bytes_);
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  const TensorInfo* tensor = header_.find(name);
  SHARDLORA_CHECK(tensor, path_, ": no tensor named '", name, "'");
  return *tensor;
}

void SafetensorsFile::release(const TensorInfo& tensor) const {
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(data(tensor)) / page * page;
  const auto end = reinterpret_cast<uintptr_t>(data(tensor) + tensor.bytes());
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

uint64_t SafetensorsWriter::header_bound(const std::vector<std::pair<std::string, size_t>>& names_and_ranks,
                                         const std::map<std::string, std::string>& metadata) {
  // {"name":{"dtype":"F8_E4M3","shape":[d,...],"data_offsets":[b,e]}, with every name
  // character escaped as \uXXXX at worst and every number 20 digits.
  uint64_t bound = 64;
  for (const auto& [name, rank] : names_and_ranks) bound += 6 * name.size() + 64 + 21 * (rank + 2);
  for (const auto& [key, value] : metadata) bound += 6 * (key.size() + value.size()) + 8;
  return (bound + 7) / 8 * 8;
}

SafetensorsWriter::SafetensorsWriter(std::string path, uint64_t max_header_bytes)
    : path_(std::move(path)), file_(std::make_unique<DurableFile>(path_)), reserved_((max_header_bytes + 7) / 8 * 8) {
  file_->seek(8 + reserved_);
}

SafetensorsWriter::~SafetensorsWriter() = default;

void SafetensorsWriter::add(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape,
                            const void* data, uint64_t bytes) {
  SHARDLORA_CHECK(file_, path_, ": add() after finish()");
  const size_t element_bytes = safetensors_dtype_size(dtype);
  SHARDLORA_CHECK(element_bytes > 0, path_, ": tensor '", name, "': unknown dtype '", dtype, "'");
  SHARDLORA_CHECK(static_cast<uint64_t>(checked_numel(shape, name)) * element_bytes == bytes, path_, ": tensor '", name,
                  "': ", bytes, " bytes do not match its shape and dtype");
  SHARDLORA_CHECK(names_.insert(name).second, path_, ": tensor '", name, "' added twice");
  file_->write(data, bytes);
  tensors_.push_back({name, dtype, shape, offset_, offset_ + bytes});
  offset_ += bytes;
}

void SafetensorsWriter::finish(const std::map<std::string, std::string>& metadata) {
  SHARDLORA_CHECK(file_, path_, ": finish() called twice");
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  for (const auto& tensor : tensors_) {
    header[tensor.name] = {{"dtype", tensor.dtype}, {"shape", tensor.shape}, {"data_offsets", {tensor.begin, tensor.end}}};
  }
  std::string text = header.dump();
  SHARDLORA_CHECK(text.size() <= reserved_, path_, ": header of ", text.size(), " bytes exceeds the ", reserved_,
                  " reserved (header_bound too small)");
  text.resize(reserved_, ' ');
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(reserved_ >> (8 * i));
  file_->seek(0);
  file_->write(length, 8);
  file_->write(text);
  file_->publish();
  file_.reset();
}

}  // namespace shardlora::io
