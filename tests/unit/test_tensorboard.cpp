// TensorBoard event files: CRC-32C against its published check values, and a training run's
// events decoded by a reader written here from the TFRecord and protobuf wire formats (its
// own bitwise CRC, field by field): the file version first, then one event per metrics line
// holding the same numbers (as float32) under train/ and eval/ tags.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "shardlora/io/tensorboard.h"
#include "shardlora/train/trainer.h"
#include "tiny_training_run.h"

using namespace shardlora;
namespace fs = std::filesystem;

namespace {

// Bit by bit, unlike the table-driven one under test.
uint32_t bitwise_crc32c(const std::string& data) {
  uint32_t crc = 0xffffffffu;
  for (const char c : data) {
    crc ^= static_cast<unsigned char>(c);
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}
uint32_t masked(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

struct Event {
  double wall_time = 0;
  int64_t step = -1;
  std::string file_version;
  std::map<std::string, float> scalars;
};

class WireReader {
 public:
  explicit WireReader(const std::string& bytes) : bytes_(bytes) {}
  bool done() const { return at_ >= bytes_.size(); }
  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0;; shift += 7) {
      const auto byte = static_cast<unsigned char>(bytes_.at(at_++));
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return value;
    }
  }
  std::string take(size_t n) {
    std::string out = bytes_.substr(at_, n);
    EXPECT_EQ(out.size(), n) << "truncated field";
    at_ += n;
    return out;
  }

 private:
  const std::string bytes_;
  size_t at_ = 0;
};

template <typename T>
T from_bytes(const std::string& bytes) {
  T value;
  std::memcpy(&value, bytes.data(), sizeof value);
  return value;
}

std::map<std::string, float> summary_values(const std::string& bytes) {
  std::map<std::string, float> out;
  WireReader summary(bytes);
  while (!summary.done()) {
    EXPECT_EQ(summary.varint(), (1u << 3) | 2) << "Summary.value";
    WireReader value(summary.take(summary.varint()));
    std::string tag;
    float simple = 0;
    while (!value.done()) {
      const uint64_t key = value.varint();
      if (key == ((1u << 3) | 2)) {
        tag = value.take(value.varint());
      } else {
        EXPECT_EQ(key, (2u << 3) | 5) << "Value.simple_value";
        simple = from_bytes<float>(value.take(4));
      }
    }
    out[tag] = simple;
  }
  return out;
}

std::vector<Event> read_events(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string file(std::istreambuf_iterator<char>(in), {});
  std::vector<Event> events;
  for (size_t at = 0; at < file.size();) {
    const std::string length_bytes = file.substr(at, 8);
    EXPECT_EQ(from_bytes<uint32_t>(file.substr(at + 8, 4)), masked(bitwise_crc32c(length_bytes))) << "length CRC";
    const auto length = from_bytes<uint64_t>(length_bytes);
    const std::string payload = file.substr(at + 12, length);
    EXPECT_EQ(from_bytes<uint32_t>(file.substr(at + 12 + length, 4)), masked(bitwise_crc32c(payload))) << "data CRC";
    at += 16 + length;
    Event event;
    WireReader reader(payload);
    while (!reader.done()) {
      const uint64_t key = reader.varint();
      switch (key) {
        case (1u << 3) | 1: event.wall_time = from_bytes<double>(reader.take(8)); break;
        case (2u << 3) | 0: event.step = static_cast<int64_t>(reader.varint()); break;
        case (3u << 3) | 2: event.file_version = reader.take(reader.varint()); break;
        case (5u << 3) | 2: event.scalars = summary_values(reader.take(reader.varint())); break;
        default: ADD_FAILURE() << "unexpected Event field key " << key; return events;
      }
    }
    events.push_back(event);
  }
  return events;
}

class TensorBoard : public shardlora::testing::TinyTrainingRun {};

}  // namespace

TEST(TensorBoardRecords, Crc32cHasItsPublishedCheckValues) {
  const auto crc = [](const std::string& s) { return io::crc32c(s.data(), s.size()); };
  EXPECT_EQ(crc("123456789"), 0xE3069283u);           // the CRC catalogue's check value
  EXPECT_EQ(crc(std::string(32, '\0')), 0x8A9136AAu);  // RFC 3720 B.4
  EXPECT_EQ(crc(std::string(32, '\xff')), 0x62A8AB43u);
  std::string ascending;
  for (int i = 0; i < 32; ++i) ascending.push_back(static_cast<char>(i));
  EXPECT_EQ(crc(ascending), 0x46DD794Eu);
  EXPECT_EQ(io::masked_crc32c("123456789", 9), masked(0xE3069283u));
  const std::string record = io::tfrecord("abc");
  ASSERT_EQ(record.size(), 8u + 4 + 3 + 4);
  EXPECT_EQ(from_bytes<uint64_t>(record.substr(0, 8)), 3u);
}

TEST_F(TensorBoard, ARunsEventsHoldItsMetrics) {
  train::Trainer(recipe("run", {"output.tensorboard=true", "data.val_fraction=0.25", "training.eval_every=3"}))
      .run(train::StartMode::Fresh);
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(path("run"))) {
    if (entry.path().filename().string().rfind("events.out.tfevents.", 0) == 0) files.push_back(entry.path().string());
  }
  ASSERT_EQ(files.size(), 1u);
  const std::vector<Event> events = read_events(files[0]);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  std::vector<nlohmann::json> lines;
  std::ifstream metrics(path("run/metrics.jsonl"));
  for (std::string line; std::getline(metrics, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(events.size(), lines.size() + 1) << "one event per metrics line";
  int eval_events = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const Event& event = events[i + 1];
    EXPECT_EQ(event.step, lines[i]["step"].get<int64_t>());
    EXPECT_GT(event.wall_time, 1.6e9);
    if (lines[i].contains("eval_loss")) {
      ++eval_events;
      EXPECT_EQ(event.scalars.at("eval/loss"), static_cast<float>(lines[i]["eval_loss"].get<double>()));
      EXPECT_EQ(event.scalars.at("eval/perplexity"), static_cast<float>(lines[i]["eval_perplexity"].get<double>()));
    } else {
      for (const char* key : {"loss", "lr", "grad_norm", "tokens_per_s", "peak_rss_mib"}) {
        EXPECT_EQ(event.scalars.at(std::string("train/") + key), static_cast<float>(lines[i][key].get<double>())) << key;
      }
    }
  }
  EXPECT_EQ(eval_events, 2);  // steps 3 and 6

  // Starting over removes the old run's events (its curves would mix with the new ones).
  train::Trainer(recipe("run", {"output.tensorboard=true"})).run(train::StartMode::Overwrite);
  std::vector<std::string> remaining;
  for (const auto& entry : fs::directory_iterator(path("run"))) {
    if (entry.path().filename().string().rfind("events.out.tfevents.", 0) == 0) remaining.push_back(entry.path().string());
  }
  ASSERT_EQ(remaining.size(), 1u);
  EXPECT_EQ(read_events(remaining[0]).size(), 1u + 6) << "the file version and the new run's 6 log lines only";
}
