#include "shardlora/cluster/tcp_store.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <thread>

#include "shardlora/cluster/env_vars.h"

namespace shardlora::cluster {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

// Requests name their op; replies are Ok, Failed (a message) or TimedOut (a message).
enum class Op : uint8_t { Hello = 1, Set, Get, Add, Wait, Peek, Ok = 100, Failed, TimedOut };

struct Message {
  Op op = Op::Ok;
  std::vector<std::string> fields;
};

void put_u32(std::string* out, uint32_t value) {
  for (int shift = 0; shift < 32; shift += 8) out->push_back(static_cast<char>((value >> shift) & 0xff));
}

uint32_t get_u32(const char* bytes) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  return value;
}

// The whole frame: length prefix, op, field count, fields.
std::string encode(const Message& message) {
  std::string body(1, static_cast<char>(message.op));
  put_u32(&body, static_cast<uint32_t>(message.fields.size()));
  for (const auto& field : message.fields) {
    put_u32(&body, static_cast<uint32_t>(field.size()));
    body += field;
  }
  SHARDLORA_CHECK(body.size() <= kMaxFrameBytes, "store: a message of ", body.size(), " bytes is over the ", kMaxFrameBytes,
                  "-byte limit (the store carries small values, not tensors)");
  std::string frame;
  put_u32(&frame, static_cast<uint32_t>(body.size()));
  return frame + body;
}

// Every length is checked against what is left: frames come from the network.
Message decode(const std::string& body) {
  SHARDLORA_CHECK(body.size() >= 5, "store: a frame of ", body.size(), " bytes is too short");
  Message message;
  message.op = static_cast<Op>(body[0]);
  const uint32_t count = get_u32(body.data() + 1);
  size_t at = 5;
  for (uint32_t i = 0; i < count; ++i) {
    SHARDLORA_CHECK(body.size() - at >= 4, "store: frame truncated in field ", i);
    const uint32_t length = get_u32(body.data() + at);
    at += 4;
    SHARDLORA_CHECK(body.size() - at >= length, "store: field ", i, " of ", length, " bytes overruns the frame");
    message.fields.emplace_back(body, at, length);
    at += length;
  }
  SHARDLORA_CHECK(at == body.size(), "store: ", body.size() - at, " stray bytes after the fields");
  return message;
}

bool tokens_equal(const std::string& a, const std::string& b) {
  // Constant time in the secret's length: no early exit on the first differing byte.
  unsigned char differ = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) differ |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return differ == 0;
}

// A day at most: a client's timeout must not overflow the server's clock arithmetic.
int64_t parse_timeout_ms(const std::string& text) { return std::clamp<int64_t>(dist::parse_counter("timeout", text), 0, 86'400'000); }

// A reply the server can always send: a message too long for a frame (it quotes a client's
// key) is cut to fit.
std::string encode_reply(Message message) {
  for (auto& field : message.fields) {
    if (field.size() > kMaxFrameBytes / 2) field = field.substr(0, 256) + "... (" + std::to_string(field.size()) + " bytes)";
  }
  return encode(message);
}

// The connection ended before a reply: the server was gone or turned the connection away.
class ConnectionClosed : public Error {
 public:
  using Error::Error;
};

}  // namespace

// ---- server -----------------------------------------------------------------------------

struct TcpStoreServer::Impl {
  struct Session;
  int64_t unauthenticated = 0;  // io thread only; outlives `io`, whose pending handlers end sessions that count here
  asio::io_context io;          // destroyed after everything else that refers to it
  tcp::acceptor acceptor{io};
  asio::steady_timer accept_retry{io};
  TcpStoreServerOptions options;
  std::map<std::string, std::string> values;           // io thread only
  uint64_t stored_bytes = 0;                           // keys and values in `values`
  std::set<std::shared_ptr<Session>> waiting;          // sessions parked in get/wait
  std::atomic<int64_t> refused{0};
  std::thread thread;

  void accept();
  void wake_waiters();
  void store(const std::string& key, std::string value);
};

struct TcpStoreServer::Impl::Session : std::enable_shared_from_this<Session> {
  Session(Impl& server, tcp::socket socket) : server(server), socket(std::move(socket)), timer(server.io) { ++server.unauthenticated; }
  ~Session() {
    if (!authenticated) --server.unauthenticated;
  }

  Impl& server;
  tcp::socket socket;
  asio::steady_timer timer;
  char header[4] = {};
  std::string body;
  bool authenticated = false;
  Message parked;  // the get/wait this session waits on

  // A client that has not presented the token within the hello deadline is dropped.
  void start() {
    auto self = shared_from_this();
    timer.expires_after(server.options.hello_deadline);
    timer.async_wait([self](boost::system::error_code error) {
      if (error || self->authenticated || !self->socket.is_open()) return;
      ++self->server.refused;
      self->close();
    });
    read_header();
  }

  // Ends the session: its pending handlers (the deadline, a read) drop their references.
  void close() {
    boost::system::error_code ignored;
    timer.cancel();
    socket.close(ignored);
  }

  void read_header() {
    auto self = shared_from_this();
    asio::async_read(socket, asio::buffer(header), [self](boost::system::error_code error, size_t) {
      if (error) return;  // the client went away
      const uint32_t length = get_u32(self->header);
      // Before the token only a hello fits: nobody unauthenticated makes the server allocate.
      const uint32_t limit = self->authenticated ? kMaxFrameBytes : kMaxHelloBytes;
      if (length > limit) return self->refuse("a frame of " + std::to_string(length) + " bytes is over the limit");
      self->body.assign(length, '\0');
      asio::async_read(self->socket, asio::buffer(self->body), [self](boost::system::error_code error, size_t) {
        if (!error) self->handle();
      });
    });
  }

  void refuse(const std::string& why) {
    ++server.refused;
    reply({Op::Failed, {"store: " + why}}, /*then_read=*/false);
  }

  void reply(const Message& message, bool then_read = true) {
    auto self = shared_from_this();
    auto frame = std::make_shared<std::string>(encode_reply(message));
    asio::async_write(socket, asio::buffer(*frame), [self, frame, then_read](boost::system::error_code error, size_t) {
      if (error || !then_read) return self->close();
      self->read_header();
    });
  }

  void handle() {
    Message request;
    try {
      request = decode(body);
    } catch (const Error& error) {
      return refuse(error.what());
    }
    if (!authenticated) {
      if (request.op != Op::Hello || request.fields.size() != 1 || !tokens_equal(request.fields[0], server.options.token)) {
        return refuse("wrong or missing job token");
      }
      authenticated = true;
      --server.unauthenticated;
      timer.cancel();
      return reply({Op::Ok, {}});
    }
    try {
      dispatch(request);
    } catch (const Error& error) {
      reply({Op::Failed, {error.what()}});
    }
  }

  void dispatch(const Message& request) {
    const auto& f = request.fields;
    const auto need = [&](size_t count) {
      SHARDLORA_CHECK(f.size() == count, "store: op ", static_cast<int>(request.op), " takes ", count, " fields, got ", f.size());
    };
    const auto check_key = [](const std::string& key) {
      SHARDLORA_CHECK(key.size() <= kMaxKeyBytes, "store: a key of ", key.size(), " bytes is over the ", kMaxKeyBytes, "-byte limit");
    };
    switch (request.op) {
      case Op::Set:
        need(2);
        check_key(f[0]);
        server.store(f[0], f[1]);
        reply({Op::Ok, {}});
        return server.wake_waiters();
      case Op::Add: {
        need(2);
        check_key(f[0]);
        auto found = server.values.find(f[0]);
        const int64_t before = found == server.values.end() ? 0 : dist::parse_counter(f[0], found->second);
        const int64_t delta = dist::parse_counter("delta", f[1]);
        int64_t sum = 0;
        SHARDLORA_CHECK(!__builtin_add_overflow(before, delta, &sum), "store: counter '", f[0], "' would overflow");
        server.store(f[0], std::to_string(sum));
        reply({Op::Ok, {std::to_string(sum)}});
        return server.wake_waiters();
      }
      case Op::Peek: {
        need(2);
        const auto found = server.values.find(f[0]);
        return reply({Op::Ok, {found == server.values.end() ? f[1] : found->second}});
      }
      case Op::Get:
      case Op::Wait: {
        SHARDLORA_CHECK(f.size() >= 2, "store: get/wait needs a timeout and keys");
        SHARDLORA_CHECK(request.op == Op::Wait || f.size() == 2, "store: get takes one key");
        for (size_t i = 1; i < f.size(); ++i) check_key(f[i]);
        parked = request;
        if (try_answer()) return;
        server.waiting.insert(shared_from_this());
        timer.expires_after(std::chrono::milliseconds(parse_timeout_ms(f[0])));
        auto self = shared_from_this();
        timer.async_wait([self](boost::system::error_code error) {
          if (error || !self->server.waiting.erase(self)) return;  // answered meanwhile
          std::vector<std::string> keys(self->parked.fields.begin() + 1, self->parked.fields.end());
          self->reply({Op::TimedOut, {"store: no value for " + dist::join_missing(keys, self->server.values) + " after " +
                                      self->parked.fields[0] + " ms"}});
        });
        return;
      }
      default:
        throw Error("store: unknown op " + std::to_string(static_cast<int>(request.op)));
    }
  }

  // Replies to the parked get/wait when all its keys exist.
  bool try_answer() {
    std::vector<std::string> keys(parked.fields.begin() + 1, parked.fields.end());
    if (!dist::join_missing(keys, server.values).empty()) return false;
    timer.cancel();
    reply(parked.op == Op::Get ? Message{Op::Ok, {server.values.at(keys[0])}} : Message{Op::Ok, {}});
    return true;
  }
};

void TcpStoreServer::Impl::accept() {
  acceptor.async_accept([this](boost::system::error_code error, tcp::socket socket) {
    if (error == asio::error::operation_aborted || !acceptor.is_open()) return;  // the server is closing
    if (error) {
      // Out of descriptors (EMFILE) or a connection reset before it was taken: the pending
      // ones wait in the backlog; try again shortly rather than stop accepting for good.
      accept_retry.expires_after(std::chrono::milliseconds(50));
      accept_retry.async_wait([this](boost::system::error_code cancelled) {
        if (!cancelled) accept();
      });
      return;
    }
    boost::system::error_code ignored;
    if (unauthenticated >= options.max_unauthenticated) {
      ++refused;  // a flood of strangers: the job's ranks retry (TcpStore's constructor)
      socket.close(ignored);
    } else {
      socket.set_option(tcp::no_delay(true), ignored);
      std::make_shared<Session>(*this, std::move(socket))->start();
    }
    accept();
  });
}

void TcpStoreServer::Impl::store(const std::string& key, std::string value) {
  const auto found = values.find(key);
  const uint64_t old_bytes = found == values.end() ? 0 : key.size() + found->second.size();
  const uint64_t new_bytes = key.size() + value.size();
  SHARDLORA_CHECK(stored_bytes - old_bytes + new_bytes <= kMaxStoredBytes, "store: full (", stored_bytes, " bytes held, limit ",
                  kMaxStoredBytes, "): the store carries addresses and counters, not data");
  stored_bytes = stored_bytes - old_bytes + new_bytes;
  values[key] = std::move(value);
}

void TcpStoreServer::Impl::wake_waiters() {
  for (auto it = waiting.begin(); it != waiting.end();) {
    it = (*it)->try_answer() ? waiting.erase(it) : std::next(it);
  }
}

TcpStoreServer::TcpStoreServer(const TcpStoreServerOptions& options) : impl_(std::make_unique<Impl>()) {
  SHARDLORA_CHECK(!options.token.empty(), "store: the server needs a job token");
  impl_->options = options;
  boost::system::error_code error;
  const auto address = asio::ip::make_address(options.bind_address, error);
  SHARDLORA_CHECK(!error, "store: bind address '", options.bind_address, "' is not an IP address");
  const tcp::endpoint endpoint(address, options.port);
  impl_->acceptor.open(endpoint.protocol());
  impl_->acceptor.set_option(tcp::acceptor::reuse_address(true));
  impl_->acceptor.bind(endpoint, error);
  SHARDLORA_CHECK(!error, "store: cannot listen on ", options.bind_address, ":", options.port, ": ", error.message());
  impl_->acceptor.listen();
  impl_->accept();
  impl_->thread = std::thread([this] {
    // Every handler catches what a client can cause; this is the last line, so that no
    // exception can ever end the job's store.
    while (true) {
      try {
        impl_->io.run();
        return;
      } catch (const std::exception& error) {
        std::fprintf(stderr, "shardlora store: error serving a client (ignored): %s\n", error.what());
      }
    }
  });
}

TcpStoreServer::~TcpStoreServer() {
  impl_->io.stop();
  impl_->thread.join();
  impl_->waiting.clear();
}

uint16_t TcpStoreServer::port() const { return impl_->acceptor.local_endpoint().port(); }
int64_t TcpStoreServer::refused_clients() const { return impl_->refused.load(); }

// ---- client -----------------------------------------------------------------------------

struct TcpStore::Connection {
  asio::io_context io;
  tcp::socket socket{io};
  std::string peer;  // host:port, for errors
  dist::Milliseconds reply_grace{0};

  // Reads exactly `size` bytes by `deadline` (poll + recv: asio's blocking reads cannot time out).
  void read_exactly(char* data, size_t size, Clock::time_point deadline) {
    const int fd = socket.native_handle();
    while (size > 0) {
      const auto left = std::chrono::duration_cast<dist::Milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) {
        throw dist::TimeoutError("store at " + peer + ": no reply within " + std::to_string(reply_grace.count()) +
                                 " ms of the request's own timeout (is rank 0 alive?)");
      }
      pollfd ready{fd, POLLIN, 0};
      const int polled = ::poll(&ready, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
      if (polled < 0 && errno != EINTR) throw Error("store at " + peer + ": poll failed");
      if (polled <= 0) continue;
      const ssize_t got = ::recv(fd, data, size, 0);
      if (got == 0) throw ConnectionClosed("store at " + peer + ": connection closed by the server (rank 0 exited?)");
      if (got < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        throw ConnectionClosed("store at " + peer + ": connection lost (rank 0 exited?)");
      }
      data += got;
      size -= static_cast<size_t>(got);
    }
  }

  Message request(const Message& message, dist::Milliseconds reply_within) {
    boost::system::error_code error;
    asio::write(socket, asio::buffer(encode(message)), error);
    SHARDLORA_CHECK(!error, "store at ", peer, ": cannot send (", error.message(), "; rank 0 exited?)");
    const auto deadline = Clock::now() + reply_within + reply_grace;
    char header[4];
    read_exactly(header, 4, deadline);
    const uint32_t length = get_u32(header);
    SHARDLORA_CHECK(length <= kMaxFrameBytes, "store at ", peer, ": reply of ", length, " bytes is over the limit");
    std::string body(length, '\0');
    read_exactly(body.data(), length, deadline);
    Message reply = decode(body);
    if (reply.op == Op::TimedOut) throw dist::TimeoutError(reply.fields.empty() ? "store: timed out" : reply.fields[0]);
    if (reply.op == Op::Failed) throw Error(reply.fields.empty() ? "store: request failed" : reply.fields[0]);
    return reply;
  }
};

TcpStore::TcpStore(const std::string& host, uint16_t port, const std::string& token, dist::Milliseconds connect_timeout,
                   dist::Milliseconds reply_grace)
    : connection_(std::make_unique<Connection>()) {
  connection_->peer = host + ":" + std::to_string(port);
  connection_->reply_grace = reply_grace;
  const auto deadline = Clock::now() + connect_timeout;
  tcp::resolver resolver(connection_->io);
  std::string last_error;
  while (true) {
    boost::system::error_code error;
    const auto endpoints = resolver.resolve(host, std::to_string(port), error);
    if (!error) asio::connect(connection_->socket, endpoints, error);
    if (!error) {
      connection_->socket.set_option(tcp::no_delay(true), error);
      try {
        connection_->request({Op::Hello, {token}}, dist::Milliseconds(0));
        return;
      } catch (const ConnectionClosed& closed) {
        last_error = closed.what();  // turned away (a server busy with strangers): try again
      } catch (const dist::TimeoutError&) {
        throw;
      } catch (const Error& refused) {
        throw Error(std::string(refused.what()) + " (server " + connection_->peer + ")");
      }
    } else {
      last_error = error.message();
    }
    connection_->socket.close(error);
    SHARDLORA_CHECK(Clock::now() < deadline, "store: cannot reach ", connection_->peer, " within ", connect_timeout.count(),
                    " ms: ", last_error);
    std::this_thread::sleep_for(dist::Milliseconds(100));
  }
}

TcpStore::~TcpStore() = default;

void TcpStore::set(const std::string& key, const std::string& value) {
  std::lock_guard<std::mutex> lock(mutex_);
  connection_->request({Op::Set, {key, value}}, dist::Milliseconds(0));
}

std::string TcpStore::get(const std::string& key, dist::Milliseconds timeout) {
  std::lock_guard<std::mutex> lock(mutex_);
  return connection_->request({Op::Get, {std::to_string(timeout.count()), key}}, timeout).fields.at(0);
}

int64_t TcpStore::add(const std::string& key, int64_t delta) {
  std::lock_guard<std::mutex> lock(mutex_);
  return dist::parse_counter(key, connection_->request({Op::Add, {key, std::to_string(delta)}}, dist::Milliseconds(0)).fields.at(0));
}

void TcpStore::wait(const std::vector<std::string>& keys, dist::Milliseconds timeout) {
  Message message{Op::Wait, {std::to_string(timeout.count())}};
  message.fields.insert(message.fields.end(), keys.begin(), keys.end());
  std::lock_guard<std::mutex> lock(mutex_);
  connection_->request(message, timeout);
}

std::string TcpStore::peek(const std::string& key, const std::string& fallback) {
  std::lock_guard<std::mutex> lock(mutex_);
  return connection_->request({Op::Peek, {key, fallback}}, dist::Milliseconds(0)).fields.at(0);
}

std::string job_token_from_environment() {
  if (const char* token = std::getenv(env::kStoreToken); token && *token) return token;
  const char* file = std::getenv(env::kStoreTokenFile);
  SHARDLORA_CHECK(file && *file, "no job token: set ", env::kStoreToken, " or ", env::kStoreTokenFile,
                  " (shardlora launch sets it for its ranks)");
  std::ifstream in(file);
  std::string token;
  SHARDLORA_CHECK(in && std::getline(in, token) && !token.empty(), env::kStoreTokenFile, "=", file,
                  ": cannot read a token from the file's first line");
  return token;
}

std::string random_token() {
  std::ifstream urandom("/dev/urandom", std::ios::binary);
  unsigned char bytes[16];
  SHARDLORA_CHECK(urandom.read(reinterpret_cast<char*>(bytes), sizeof bytes), "cannot read /dev/urandom for a job token");
  static const char kHex[] = "0123456789abcdef";
  std::string token;
  for (unsigned char byte : bytes) {
    token.push_back(kHex[byte >> 4]);
    token.push_back(kHex[byte & 15]);
  }
  return token;
}

}  // namespace shardlora::cluster
