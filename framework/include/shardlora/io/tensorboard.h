// TensorBoard event files (events.out.tfevents.*), written without TensorFlow: TFRecord
// framing (uint64 length, masked CRC32C of the length, the bytes, masked CRC32C of the
// bytes; little-endian) around tensorflow.Event protobufs encoded by hand:
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
// The first event carries file_version "brain.Event:2", as TensorFlow's writer does. Each
// record is written with one write(2), so a reader sees whole records up to the last log.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace shardlora::io {

class AppendFile;

// CRC-32C (Castagnoli), and TFRecord's mask of it: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t crc32c(const void* data, size_t size);
uint32_t masked_crc32c(const void* data, size_t size);

// `payload` framed as one TFRecord.
std::string tfrecord(const std::string& payload);

class TensorBoardWriter {
 public:
  // A new events.out.tfevents.<unix time>.<host>.<pid>.0 in `dir` (which must exist).
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One event at `step` holding a simple_value per (tag, value).
  void add_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::unique_ptr<AppendFile> file_;
};

}  // namespace shardlora::io
