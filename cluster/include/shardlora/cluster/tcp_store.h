// The rendezvous store of a job, served over TCP by rank 0 (c10d's TCPStore), written with
// Boost.Asio. Every connection must first present the job's token (SHARDLORA_STORE_TOKEN, or
// the file named by SHARDLORA_STORE_TOKEN_FILE); a client without it is refused and
// disconnected. Frames are bounded (kMaxFrameBytes): the store carries addresses, ids and
// counters, never tensors. The server binds to the interface it is given.
//
// The port is reachable by anyone on the network, so the server is built to outlast any
// client: before the token only a small hello frame is read, a client that has not sent it
// within hello_deadline is dropped, at most max_unauthenticated strangers are held at once, keys
// and the stored total are bounded, the accept loop survives running out of descriptors,
// and no request (authenticated or not) can throw out of the server.
//
// Wire format: u32 little-endian length, then an op byte and length-prefixed strings.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "shardlora/dist/store.h"

namespace shardlora::cluster {

inline constexpr uint32_t kMaxFrameBytes = 1u << 20;
inline constexpr uint32_t kMaxHelloBytes = 1024;        // a frame before the token
inline constexpr uint32_t kMaxKeyBytes = 4096;
inline constexpr uint64_t kMaxStoredBytes = 64u << 20;  // keys and values held at once

struct TcpStoreServerOptions {
  std::string bind_address = "0.0.0.0";  // an interface's address; 127.0.0.1 keeps it on this host
  uint16_t port = 0;                     // 0: the OS picks one (see port())
  std::string token;                     // required from every client; must not be empty
  std::chrono::milliseconds hello_deadline{5000};  // to present the token, from the connection
  int64_t max_unauthenticated = 64;                // strangers held at once; more are closed at once
};

// Serves until destroyed, on a thread of its own.
class TcpStoreServer {
 public:
  explicit TcpStoreServer(const TcpStoreServerOptions& options);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

  uint16_t port() const;
  int64_t refused_clients() const;  // connections closed: a wrong token, a bad frame, silence, a flood

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A client: one request at a time (calls from several threads are serialized).
class TcpStore : public dist::Store {
 public:
  // Retries the connection until `connect_timeout` (rank 0 may still be starting), then
  // presents the token; Error when refused or unreachable, naming host:port. A reply may
  // take `reply_grace` beyond the request's own timeout before the server counts as lost
  // (dist::TimeoutError): a watchdog's connection sets it to its silence limit.
  TcpStore(const std::string& host, uint16_t port, const std::string& token, dist::Milliseconds connect_timeout,
           dist::Milliseconds reply_grace = dist::Milliseconds(30000));
  ~TcpStore() override;

  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key, dist::Milliseconds timeout) override;
  int64_t add(const std::string& key, int64_t delta) override;
  void wait(const std::vector<std::string>& keys, dist::Milliseconds timeout) override;
  std::string peek(const std::string& key, const std::string& fallback) override;

 private:
  struct Connection;
  std::unique_ptr<Connection> connection_;
  std::mutex mutex_;
};

// The job token: SHARDLORA_STORE_TOKEN, else the first line of SHARDLORA_STORE_TOKEN_FILE;
// Error when neither is set or the file cannot be read.
std::string job_token_from_environment();

// A fresh random token (hex of 16 bytes from /dev/urandom) for a launcher to hand its ranks.
std::string random_token();

}  // namespace shardlora::cluster
