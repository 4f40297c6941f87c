// A Hugging Face model directory (FORMATS.md §6.2-6.3): config.json plus model.safetensors,
// or a model.safetensors.index.json naming the shard of every tensor.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace shardlora::io {

struct HfCheckpoint {
  std::string dir;
  nlohmann::json config;                         // config.json
  std::vector<std::string> shards;               // safetensors file names, in order
  bool indexed = false;                          // came with model.safetensors.index.json
  std::map<std::string, std::string> weight_map; // tensor -> shard (indexed checkpoints)

  std::string path(const std::string& file) const { return dir + "/" + file; }
};

constexpr const char kConfigFile[] = "config.json";
constexpr const char kSingleShard[] = "model.safetensors";
constexpr const char kShardIndex[] = "model.safetensors.index.json";

// Reads config.json and finds the weights; errors name the file (and key).
HfCheckpoint open_hf_checkpoint(const std::string& dir);

// Reads and parses a JSON file; errors name it.
nlohmann::json read_json_file(const std::string& path);

// eos_token_id of a config file (config.json, generation_config.json): one id or a list;
// empty when the file or the key is absent. Errors name the file.
std::vector<int64_t> eos_token_ids(const std::string& json_path);

// Required config.json fields; errors name the file and the key.
std::string config_string(const HfCheckpoint& checkpoint, const char* key);
int64_t config_positive_int(const HfCheckpoint& checkpoint, const char* key);

}  // namespace shardlora::io
