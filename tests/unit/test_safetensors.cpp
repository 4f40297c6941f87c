// safetensors reader and writer: round trip, and hand-built corrupt files that must each
// fail with an error naming the file and the tensor, never crash or read out of bounds.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "shardlora/io/safetensors.h"
#include "shardlora/kernels/check.h"
#include "temp_dir.h"

using namespace shardlora::io;

namespace {

// A file image: 8-byte little-endian length, the header text, the data bytes.
std::string file_image(const std::string& header, const std::string& data) {
  std::string image(8, '\0');
  const uint64_t length = header.size();
  for (int i = 0; i < 8; ++i) image[i] = static_cast<char>(length >> (8 * i));
  return image + header + data;
}

std::string parse_error(const std::string& image) {
  try {
    parse_safetensors_header(reinterpret_cast<const uint8_t*>(image.data()), image.size(), "bad.safetensors");
  } catch (const shardlora::Error& error) {
    return error.what();
  }
  return "no error";
}

using TempDir = shardlora::testing::TempDirTest;

const std::string kTwoTensors =
    R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}})";

}  // namespace

TEST(SafetensorsHeader, ParsesValidHeaderAndMetadata) {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string image = file_image(header, std::string(11, 'x'));
  const auto parsed = parse_safetensors_header(reinterpret_cast<const uint8_t*>(image.data()), image.size(), "f");
  ASSERT_EQ(parsed.tensors.size(), 2u);
  EXPECT_EQ(parsed.tensors[0].name, "a") << "ordered by offset";
  EXPECT_EQ(parsed.tensors[1].shape, std::vector<int64_t>{3});
  EXPECT_EQ(parsed.metadata.at("format"), "pt");
  EXPECT_EQ(parsed.data_bytes, 11u);
}

TEST(SafetensorsHeader, RejectsCorruptFilesNamingFileAndTensor) {
  const std::string data(11, 'x');
  struct Case {
    std::string image, fragment;
  };
  const std::vector<Case> cases = {
      {"short", "shorter than the header length"},
      {file_image(kTwoTensors, data).substr(0, 40), "truncated"},
      {std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}", "exceeds the limit"},
      {file_image("[1,2]", ""), "not a JSON object"},
      {file_image("{\"a\":", ""), "not valid JSON"},
      {file_image(R"({"a":{"dtype":"F99","shape":[2],"data_offsets":[0,8]}})", std::string(8, 'x')), "tensor 'a': unknown dtype 'F99'"},
      {file_image(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, 'x')), "tensor 'a': shape"},
      {file_image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, 'x')), "tensor 'a': 8 bytes of data for a F32 tensor of 3"},
      {file_image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,80]}})", std::string(8, 'x')), "tensor 'a': data ends at byte 80"},
      {file_image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", std::string(8, 'x')), "end before they begin"},
      {file_image(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", std::string(8, 'x')), "overlapping or gapped"},
      {file_image(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", std::string(8, 'x')), "tensor 'a' starts at byte 4"},
      {file_image(kTwoTensors, data + "zz"), "cover 11 of 13"},
      {file_image(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", "xx"), "'a' appears twice"},
      {file_image(R"({"__metadata__":{},"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"__metadata__":{}})", "x"), "'__metadata__' appears twice"},
      {file_image(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)", "x"), "header is not valid JSON"},
      {file_image(R"({"__metadata__":{"format":1}})", ""), "__metadata__ value of 'format'"},
      {file_image(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,0]}})", ""), "shape overflows"},
      {file_image(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":1}})", "x"), "unexpected field 'extra'"},
  };
  for (const auto& c : cases) {
    const std::string message = parse_error(c.image);
    EXPECT_NE(message.find(c.fragment), std::string::npos) << "expected '" << c.fragment << "' in: " << message;
    EXPECT_NE(message.find("bad.safetensors"), std::string::npos) << message;
  }
}

TEST_F(TempDir, WriterRoundTripsThroughTheReader) {
  const float a[3] = {1.5f, -2.0f, 3.25f};
  const uint8_t b[5] = {1, 2, 3, 4, 5};
  {
    SafetensorsWriter writer(path("t.safetensors"), SafetensorsWriter::header_bound({{"a", 1}, {"b \"quoted\"", 2}}));
    writer.add("a", "F32", {3}, a, sizeof a);
    writer.add("b \"quoted\"", "U8", {5, 1}, b, sizeof b);
    writer.finish({{"format", "pt"}});
  }
  const SafetensorsFile file(path("t.safetensors"));
  EXPECT_EQ(file.header().metadata.at("format"), "pt");
  EXPECT_EQ(0, std::memcmp(file.data(file.info("a")), a, sizeof a));
  EXPECT_EQ(file.info("b \"quoted\"").shape, (std::vector<int64_t>{5, 1}));
  EXPECT_EQ(0, std::memcmp(file.data(file.info("b \"quoted\"")), b, sizeof b));
  EXPECT_EQ(file.header().header_bytes % 8, 0u) << "header padded to 8 bytes like the reference writer";
  EXPECT_THROW(file.info("missing"), shardlora::Error);
}

TEST_F(TempDir, UnfinishedWriterLeavesNoFile) {
  {
    SafetensorsWriter writer(path("t.safetensors"), 256);
    const uint8_t byte = 1;
    writer.add("a", "U8", {1}, &byte, 1);
  }
  EXPECT_TRUE(std::filesystem::is_empty(root_)) << "neither the file nor its temporary may remain";
}

TEST_F(TempDir, WriterRejectsMismatchedSizesAndDuplicates) {
  SafetensorsWriter writer(path("t.safetensors"), 256);
  const float values[2] = {};
  EXPECT_THROW(writer.add("a", "F32", {3}, values, sizeof values), shardlora::Error);
  writer.add("a", "F32", {2}, values, sizeof values);
  EXPECT_THROW(writer.add("a", "F32", {2}, values, sizeof values), shardlora::Error);
  EXPECT_THROW(writer.add("c", "Q4", {2}, values, sizeof values), shardlora::Error);
}

TEST_F(TempDir, ReaderNamesMissingAndEmptyFiles) {
  try {
    SafetensorsFile missing(path("missing.safetensors"));
    FAIL() << "no error";
  } catch (const shardlora::Error& error) {
    EXPECT_NE(std::string(error.what()).find("missing.safetensors"), std::string::npos);
  }
  std::ofstream(path("empty.safetensors")).close();
  EXPECT_THROW(SafetensorsFile(path("empty.safetensors")), shardlora::Error);
  // A FIFO would block the open forever, waiting for a writer.
  ASSERT_EQ(::mkfifo(path("fifo.safetensors").c_str(), 0600), 0);
  try {
    SafetensorsFile fifo(path("fifo.safetensors"));
    FAIL() << "no error";
  } catch (const shardlora::Error& error) {
    EXPECT_NE(std::string(error.what()).find("fifo.safetensors: not a regular file"), std::string::npos) << error.what();
  }
}

TEST(SafetensorsHeader, ParsingAndLookupsStayLinearWithManyEntries) {
  // 50,000 entries: nlohmann's callback parser and a linear find per tensor each made
  // reading such a header quadratic (28 s here, 40 s for quantize).
  std::string json = "{";
  constexpr int kEntries = 50000;
  for (int i = 0; i < kEntries; ++i) {
    json += (i ? "," : "") + std::string("\"t") + std::to_string(i) + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" +
            std::to_string(i) + "," + std::to_string(i + 1) + "]}";
  }
  json += "}";
  std::vector<uint8_t> file(8 + json.size() + kEntries);
  for (int i = 0; i < 8; ++i) file[i] = static_cast<uint8_t>(json.size() >> (8 * i));
  std::memcpy(file.data() + 8, json.data(), json.size());
  const auto start = std::chrono::steady_clock::now();
  const auto header = parse_safetensors_header(file.data(), file.size(), "many.safetensors");
  for (int i = 0; i < kEntries; ++i) ASSERT_NE(header.find("t" + std::to_string(i)), nullptr);
  EXPECT_EQ(header.find("t" + std::to_string(kEntries)), nullptr);
  // A complexity guard, not a speed goal: 0.15 s here, against 28 s when quadratic.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}
