#include "shardlora/io/tensorboard.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>

#include "shardlora/io/durable_file.h"

namespace shardlora::io {
namespace {

// Reflected CRC-32C table (polynomial 0x82F63B78).
const std::array<uint32_t, 256>& crc32c_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t crc = i;
      for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1) ? 0x82F63B78u : 0u);
      t[i] = crc;
    }
    return t;
  }();
  return table;
}

template <typename T>
void append_little_endian(std::string* out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) out->push_back(static_cast<char>((static_cast<uint64_t>(value) >> (8 * i)) & 0xff));
}

// Protobuf wire format: a key is (field << 3) | wire type; varints 7 bits a byte, low first.
void varint(std::string* out, uint64_t value) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}
void key(std::string* out, int field, int wire_type) { varint(out, static_cast<uint64_t>(field << 3 | wire_type)); }
void bytes_field(std::string* out, int field, const std::string& bytes) {
  key(out, field, 2);
  varint(out, bytes.size());
  *out += bytes;
}
void double_field(std::string* out, int field, double value) {
  key(out, field, 1);
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  append_little_endian(out, bits);
}
void float_field(std::string* out, int field, float value) {
  key(out, field, 5);
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  append_little_endian(out, bits);
}

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Event { wall_time = 1, step = 2, then file_version = 3 or summary = 5 }.
std::string event(int64_t step, int field, const std::string& bytes) {
  std::string out;
  double_field(&out, 1, unix_seconds());
  key(&out, 2, 0);
  varint(&out, static_cast<uint64_t>(step));
  bytes_field(&out, field, bytes);
  return out;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < size; ++i) crc = crc32c_table()[(crc ^ bytes[i]) & 0xff] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string tfrecord(const std::string& payload) {
  std::string header;
  append_little_endian(&header, static_cast<uint64_t>(payload.size()));
  std::string out = header;
  append_little_endian(&out, masked_crc32c(header.data(), header.size()));
  out += payload;
  append_little_endian(&out, masked_crc32c(payload.data(), payload.size()));
  return out;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  char host[256] = "localhost";
  ::gethostname(host, sizeof host - 1);
  char name[512];
  std::snprintf(name, sizeof name, "/events.out.tfevents.%010lld.%s.%d.0", static_cast<long long>(unix_seconds()), host,
                static_cast<int>(::getpid()));
  path_ = dir + name;
  file_ = std::make_unique<AppendFile>(path_);
  file_->append(tfrecord(event(0, 3, "brain.Event:2")));
}

TensorBoardWriter::~TensorBoardWriter() = default;

void TensorBoardWriter::add_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars) {
  std::string summary;
  for (const auto& [tag, value] : scalars) {
    std::string entry;
    bytes_field(&entry, 1, tag);
    float_field(&entry, 2, static_cast<float>(value));
    bytes_field(&summary, 1, entry);
  }
  file_->append(tfrecord(event(step, 5, summary)));
}

}  // namespace shardlora::io
