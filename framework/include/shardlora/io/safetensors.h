// safetensors files (Hugging Face's safetensors format; FORMATS.md §6.1): an 8-byte
// little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, and
// optionally "__metadata__": {str: str}}, then the data section.
//
// The reader treats files as untrusted: before any tensor is touched it checks the header
// length, the JSON, every dtype, shape and offset (no overflow, inside the file, no overlap,
// no gap: the tensors tile the data section exactly, as the reference implementation
// requires). Errors name the file and the tensor. No libtorch here, so the parser can be
// fuzzed on its own (scripts/fuzz-safetensors).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "shardlora/io/durable_file.h"

namespace shardlora::io {

// Element size of a safetensors dtype name ("F32", "BF16", "U8", ...); 0 when unknown.
size_t safetensors_dtype_size(const std::string& dtype);

struct TensorInfo {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
  int64_t numel() const;
  uint64_t bytes() const { return end - begin; }
};

struct SafetensorsHeader {
  uint64_t header_bytes = 0;                  // N
  uint64_t data_bytes = 0;                    // file size - 8 - N
  std::vector<TensorInfo> tensors;            // ordered by offset
  std::map<std::string, std::string> metadata;
  std::map<std::string, size_t> index;        // name -> position in `tensors`
  const TensorInfo* find(const std::string& name) const;  // O(log n): headers may hold many entries
};

// Largest header the reader accepts (the reference implementation's limit).
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// Validates and parses the header of a whole file image; `label` (the path) prefixes errors.
SafetensorsHeader parse_safetensors_header(const uint8_t* file, uint64_t file_bytes, const std::string& label);

// A read-only memory map of a safetensors file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  // The tensor's info; throws naming the file when it is missing.
  const TensorInfo& info(const std::string& name) const;
  const uint8_t* data(const TensorInfo& tensor) const { return data_section_ + tensor.begin; }
  // Drops the tensor's pages from this process (they stay in the page cache): a converter
  // streaming through a large file keeps its resident memory near one tensor.
  void release(const TensorInfo& tensor) const;

 private:
  std::string path_;
  const uint8_t* map_ = nullptr;
  uint64_t map_bytes_ = 0;
  const uint8_t* data_section_ = nullptr;
  SafetensorsHeader header_;
};

// Writes a safetensors file tensor by tensor, so a converter never holds more than one
// tensor: the data goes after a reserved header area, and finish() writes the header
// there (padded with spaces, as the format allows) and publishes the file (DurableFile:
// checked writes, fsync, rename). Without finish() the partial file is removed: no
// half-written output.
class SafetensorsWriter {
 public:
  // max_header_bytes: an upper bound from header_bound().
  SafetensorsWriter(std::string path, uint64_t max_header_bytes);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  void add(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape, const void* data,
           uint64_t bytes);
  void finish(const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
  uint64_t data_bytes() const { return offset_; }

  // Bound on the header of these tensors (names and ranks known; offsets at most 20 digits).
  static uint64_t header_bound(const std::vector<std::pair<std::string, size_t>>& names_and_ranks,
                               const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

 private:
  std::string path_;
  std::unique_ptr<DurableFile> file_;  // null once finished
  uint64_t reserved_ = 0;
  uint64_t offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::set<std::string> names_;
};

}  // namespace shardlora::io
