#include "shardlora/io/hf_checkpoint.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "shardlora/kernels/check.h"

namespace shardlora::io {

namespace fs = std::filesystem;

std::vector<int64_t> eos_token_ids(const std::string& json_path) {
  if (!std::filesystem::exists(json_path)) return {};
  const nlohmann::json json = read_json_file(json_path);
  const auto it = json.find("eos_token_id");
  if (it == json.end() || it->is_null()) return {};
  std::vector<int64_t> ids;
  for (const auto& id : it->is_array() ? *it : nlohmann::json::array({*it})) {
    SHARDLORA_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0, json_path, ": key 'eos_token_id' must hold token ids, found ",
                    it->dump());
    ids.push_back(id.get<int64_t>());
  }
  return ids;
}

nlohmann::json read_json_file(const std::string& path) {
  std::error_code error;
  // A FIFO or a device would block the read or never end.
  SHARDLORA_CHECK(!fs::exists(path, error) || fs::is_regular_file(path, error), path, ": not a regular file");
  std::ifstream in(path, std::ios::binary);
  SHARDLORA_CHECK(in, path, ": cannot open");
  std::stringstream text;
  text << in.rdbuf();
  auto parsed = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  SHARDLORA_CHECK(!parsed.is_discarded(), path, ": not valid JSON");
  SHARDLORA_CHECK(parsed.is_object(), path, ": not a JSON object");
  return parsed;
}

HfCheckpoint open_hf_checkpoint(const std::string& dir) {
  SHARDLORA_CHECK(fs::is_directory(dir), dir, ": not a directory");
  HfCheckpoint checkpoint;
  checkpoint.dir = dir;
  SHARDLORA_CHECK(fs::exists(checkpoint.path(kConfigFile)), checkpoint.path(kConfigFile),
                  ": missing (not a Hugging Face model directory?)");
  checkpoint.config = read_json_file(checkpoint.path(kConfigFile));
  if (fs::exists(checkpoint.path(kShardIndex))) {
    const std::string index_path = checkpoint.path(kShardIndex);
    const auto index = read_json_file(index_path);
    const auto map = index.find("weight_map");
    SHARDLORA_CHECK(map != index.end() && map->is_object() && !map->empty(), index_path, ": no weight_map");
    std::set<std::string> seen;
    for (const auto& [tensor, shard] : map->items()) {
      SHARDLORA_CHECK(shard.is_string(), index_path, ": weight_map entry '", tensor, "' is not a file name");
      const std::string file = shard.get<std::string>();
      SHARDLORA_CHECK(file.find('/') == std::string::npos && file != ".." && !file.empty(), index_path,
                      ": weight_map entry '", tensor, "' names '", file, "', outside the directory");
      SHARDLORA_CHECK(fs::exists(checkpoint.path(file)), index_path, ": shard '", file, "' of tensor '", tensor, "' is missing");
      checkpoint.weight_map[tensor] = file;
      if (seen.insert(file).second) checkpoint.shards.push_back(file);
    }
    checkpoint.indexed = true;
  } else if (fs::exists(checkpoint.path(kSingleShard))) {
    checkpoint.shards.push_back(kSingleShard);
  } else {
    const bool pickle = fs::exists(checkpoint.path("pytorch_model.bin")) || fs::exists(checkpoint.path("pytorch_model.bin.index.json"));
    throw Error(detail::concat(dir, ": no ", kSingleShard, " or ", kShardIndex,
                               pickle ? " (only PyTorch .bin weights: convert them to safetensors first)" : ""));
  }
  return checkpoint;
}

std::string config_string(const HfCheckpoint& checkpoint, const char* key) {
  const auto it = checkpoint.config.find(key);
  SHARDLORA_CHECK(it != checkpoint.config.end() && it->is_string(), checkpoint.path(kConfigFile), ": key '", key,
                  "' is missing or not a string");
  return it->get<std::string>();
}

int64_t config_positive_int(const HfCheckpoint& checkpoint, const char* key) {
  const auto it = checkpoint.config.find(key);
  SHARDLORA_CHECK(it != checkpoint.config.end() && it->is_number_integer() && it->get<int64_t>() > 0,
                  checkpoint.path(kConfigFile), ": key '", key, "' is missing or not a positive integer");
  return it->get<int64_t>();
}

}  // namespace shardlora::io
