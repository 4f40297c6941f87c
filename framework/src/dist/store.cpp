#include "shardlora/dist/store.h"

#include <cerrno>
#include <cstdlib>

namespace shardlora::dist {

std::string join_missing(const std::vector<std::string>& keys, const std::map<std::string, std::string>& values) {
  std::string missing;
  for (const auto& key : keys) {
    if (values.count(key)) continue;
    missing += (missing.empty() ? "'" : ", '") + key + "'";
  }
  return missing;
}

int64_t parse_counter(const std::string& key, const std::string& text) {
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  SHARDLORA_CHECK(!text.empty() && end && *end == '\0' && errno == 0, "store key '", key, "' holds '", text,
                  "', not a counter: add() needs an integer value");
  return value;
}

void InMemoryStore::set(const std::string& key, const std::string& value) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    values_[key] = value;
  }
  changed_.notify_all();
}

std::string InMemoryStore::get(const std::string& key, Milliseconds timeout) {
  wait({key}, timeout);
  std::lock_guard<std::mutex> lock(mutex_);
  return values_.at(key);
}

int64_t InMemoryStore::add(const std::string& key, int64_t delta) {
  int64_t sum = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = values_.find(key);
    sum = (found == values_.end() ? 0 : parse_counter(key, found->second)) + delta;
    values_[key] = std::to_string(sum);
  }
  changed_.notify_all();
  return sum;
}

void InMemoryStore::wait(const std::vector<std::string>& keys, Milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  const bool all = changed_.wait_for(lock, timeout, [&] { return join_missing(keys, values_).empty(); });
  if (!all) {
    throw TimeoutError("store: no value for " + join_missing(keys, values_) + " after " +
                       std::to_string(timeout.count()) + " ms");
  }
}

std::string InMemoryStore::peek(const std::string& key, const std::string& fallback) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto found = values_.find(key);
  return found == values_.end() ? fallback : found->second;
}

}  // namespace shardlora::dist
