#include "shardlora/cluster/tcp_store.h"

#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <boost/asio.hpp>
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

int64_t parse_timeout_ms(const std::string& text) { return dist::parse_counter("timeout", text); }

}  // namespace

// ---- server -----------------------------------------------------------------------------

struct TcpStoreServer::Impl {
  struct Session;
  asio::io_context io;  // first member: destroyed last, after everything that refers to it
  tcp::acceptor acceptor{io};
  std::string token;
  std::map<std::string, std::string> values;           // io thread only
  std::set<std::shared_ptr<Session>> waiting;          // sessions parked in get/wait
  std::atomic<int64_t> refused{0};
  std::thread thread;

  void accept();
  void wake_waiters();
};

struct TcpStoreServer::Impl::Session : std::enable_shared_from_this<Session> {
  Session(Impl& server, tcp::socket socket) : server(server), socket(std::move(socket)), timer(server.io) {}

  Impl& server;
  tcp::socket socket;
  asio::steady_timer timer;
  char header[4] = {};
  std::string body;
  bool authenticated = false;
  Message parked;  // the get/wait this session waits on

  void read_header() {
    auto self = shared_from_this();
    asio::async_read(socket, asio::buffer(header), [self](boost::system::error_code error, size_t) {
      if (error) return;  // the client went away
      const uint32_t length = get_u32(self->header);
      if (length > kMaxFrameBytes) return self->refuse("a frame of " + std::to_string(length) + " bytes is over the limit");
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
    auto frame = std::make_shared<std::string>(encode(message));
    asio::async_write(socket, asio::buffer(*frame), [self, frame, then_read](boost::system::error_code error, size_t) {
      if (!error && then_read) self->read_header();
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
      if (request.op != Op::Hello || request.fields.size() != 1 || !tokens_equal(request.fields[0], server.token)) {
        return refuse("wrong or missing job token");
      }
      authenticated = true;
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
    switch (request.op) {
      case Op::Set:
        need(2);
        server.values[f[0]] = f[1];
        reply({Op::Ok, {}});
        return server.wake_waiters();
      case Op::Add: {
        need(2);
        auto found = server.values.find(f[0]);
        const int64_t sum = (found == server.values.end() ? 0 : dist::parse_counter(f[0], found->second)) +
                            dist::parse_counter("delta", f[1]);
        server.values[f[0]] = std::to_string(sum);
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
    if (error) return;  // the acceptor was closed
    socket.set_option(tcp::no_delay(true));
    std::make_shared<Session>(*this, std::move(socket))->read_header();
    accept();
  });
}

void TcpStoreServer::Impl::wake_waiters() {
  for (auto it = waiting.begin(); it != waiting.end();) {
    it = (*it)->try_answer() ? waiting.erase(it) : std::next(it);
  }
}

TcpStoreServer::TcpStoreServer(const TcpStoreServerOptions& options) : impl_(std::make_unique<Impl>()) {
  SHARDLORA_CHECK(!options.token.empty(), "store: the server needs a job token");
  impl_->token = options.token;
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
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

TcpStoreServer::~TcpStoreServer() {
  impl_->io.stop();
  impl_->thread.join();
  impl_->waiting.clear();
}

uint16_t TcpStoreServer::port() const { return impl_->acceptor.local_endpoint().port(); }
int64_t TcpStoreServer::refused_clients() const { return impl_->refused.load(); }

// ---- client -----------------------------------------------------------------------------

namespace {
// How long a reply may take beyond the request's own timeout before the server counts as lost.
constexpr dist::Milliseconds kReplyGrace{30000};
}  // namespace

struct TcpStore::Connection {
  asio::io_context io;
  tcp::socket socket{io};
  std::string peer;  // host:port, for errors

  // Reads exactly `size` bytes by `deadline` (poll + recv: asio's blocking reads cannot time out).
  void read_exactly(char* data, size_t size, Clock::time_point deadline) {
    const int fd = socket.native_handle();
    while (size > 0) {
      const auto left = std::chrono::duration_cast<dist::Milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) throw dist::TimeoutError("store at " + peer + ": no reply in time (is rank 0 alive?)");
      pollfd ready{fd, POLLIN, 0};
      const int polled = ::poll(&ready, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
      if (polled < 0 && errno != EINTR) throw Error("store at " + peer + ": poll failed");
      if (polled <= 0) continue;
      const ssize_t got = ::recv(fd, data, size, 0);
      if (got == 0) throw Error("store at " + peer + ": connection closed by the server (rank 0 exited?)");
      if (got < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        throw Error("store at " + peer + ": connection lost (rank 0 exited?)");
      }
      data += got;
      size -= static_cast<size_t>(got);
    }
  }

  Message request(const Message& message, dist::Milliseconds reply_within) {
    boost::system::error_code error;
    asio::write(socket, asio::buffer(encode(message)), error);
    SHARDLORA_CHECK(!error, "store at ", peer, ": cannot send (", error.message(), "; rank 0 exited?)");
    const auto deadline = Clock::now() + reply_within + kReplyGrace;
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

TcpStore::TcpStore(const std::string& host, uint16_t port, const std::string& token, dist::Milliseconds connect_timeout)
    : connection_(std::make_unique<Connection>()) {
  connection_->peer = host + ":" + std::to_string(port);
  const auto deadline = Clock::now() + connect_timeout;
  tcp::resolver resolver(connection_->io);
  std::string last_error;
  while (true) {
    boost::system::error_code error;
    const auto endpoints = resolver.resolve(host, std::to_string(port), error);
    if (!error) asio::connect(connection_->socket, endpoints, error);
    if (!error) break;
    last_error = error.message();
    connection_->socket.close();
    SHARDLORA_CHECK(Clock::now() < deadline, "store: cannot reach ", connection_->peer, " within ", connect_timeout.count(),
                    " ms: ", last_error);
    std::this_thread::sleep_for(dist::Milliseconds(100));
  }
  connection_->socket.set_option(tcp::no_delay(true));
  try {
    connection_->request({Op::Hello, {token}}, dist::Milliseconds(0));
  } catch (const dist::TimeoutError&) {
    throw;
  } catch (const Error& error) {
    throw Error(std::string(error.what()) + " (server " + connection_->peer + ")");
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
