// A key-value store for rendezvous (c10d's Store): ranks publish small values (addresses, the
// NCCL unique id, heartbeats) and wait for each other's. It is kept apart from the
// Communicator: the store bootstraps and watches a job, the communicator moves tensors.
//
// InMemoryStore serves threads of one process (tests); cluster/tcp_store.h serves the ranks of
// a job from rank 0 over TCP.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "shardlora/kernels/check.h"

namespace shardlora::dist {

// A wait that ran past its deadline: a peer is late, hung or gone.
class TimeoutError : public Error {
 public:
  using Error::Error;
};

using Milliseconds = std::chrono::milliseconds;

class Store {
 public:
  virtual ~Store() = default;

  virtual void set(const std::string& key, const std::string& value) = 0;
  // The value of `key`, waiting until some rank sets it; TimeoutError naming the key after `timeout`.
  virtual std::string get(const std::string& key, Milliseconds timeout) = 0;
  // Adds `delta` to the integer at `key` (absent: 0) and returns the sum: counters, barriers.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
  // Returns once every key exists; TimeoutError naming the missing ones after `timeout`.
  virtual void wait(const std::vector<std::string>& keys, Milliseconds timeout) = 0;
  // The value of `key` now, or `fallback` when it is not set: never waits (watchdogs poll).
  virtual std::string peek(const std::string& key, const std::string& fallback) = 0;
};

class InMemoryStore : public Store {
 public:
  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key, Milliseconds timeout) override;
  int64_t add(const std::string& key, int64_t delta) override;
  void wait(const std::vector<std::string>& keys, Milliseconds timeout) override;
  std::string peek(const std::string& key, const std::string& fallback) override;

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::string, std::string> values_;
};

// The keys of `keys` missing from `values`, quoted and joined for an error message.
std::string join_missing(const std::vector<std::string>& keys, const std::map<std::string, std::string>& values);

// Parses a counter value written by add(); Error naming the key when it is not an integer.
int64_t parse_counter(const std::string& key, const std::string& text);

}  // namespace shardlora::dist
