// The rendezvous stores: the in-memory one and the TCP one rank 0 serves (real sockets on a
// loopback port the OS picks).
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <netinet/in.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <cerrno>
#include <chrono>
#include <random>
#include <thread>

#include "shardlora/cluster/tcp_store.h"
#include "shardlora/dist/store.h"

using namespace shardlora;
using namespace std::chrono_literals;

namespace {

constexpr char kToken[] = "s3cret-job-token";

template <typename Body>
void expect_error_containing(Body body, const std::string& needle) {
  try {
    body();
    ADD_FAILURE() << "expected an error containing '" << needle << "'";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(needle), std::string::npos) << error.what();
  }
}

// Behaviour every store must have, run against both; `other` is a second handle on the same
// store (another rank's client: one client serves one request at a time).
void check_store_semantics(dist::Store& store, dist::Store& other) {
  store.set("a", "1");
  EXPECT_EQ(store.get("a", 100ms), "1");
  store.set("a", "two");
  EXPECT_EQ(store.get("a", 100ms), "two");
  EXPECT_EQ(store.peek("missing", "fallback"), "fallback");
  EXPECT_EQ(store.add("counter", 5), 5);
  EXPECT_EQ(store.add("counter", -2), 3);
  expect_error_containing([&] { store.add("a", 1); }, "'a'");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(store.get("never", 200ms), dist::TimeoutError);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 190ms);
  expect_error_containing([&] { store.wait({"a", "x", "y"}, 50ms); }, "'x', 'y'");
  // A value set later by another thread wakes a waiting get.
  std::thread setter([&] {
    std::this_thread::sleep_for(100ms);
    other.set("late", "here");
  });
  EXPECT_EQ(store.get("late", 5000ms), "here");
  setter.join();
}

}  // namespace

TEST(InMemoryStore, SetGetAddWaitTimeouts) {
  dist::InMemoryStore store;
  check_store_semantics(store, store);
}

TEST(TcpStore, SameSemanticsOverTheWire) {
  cluster::TcpStoreServer server({"127.0.0.1", 0, kToken});
  ASSERT_NE(server.port(), 0);
  cluster::TcpStore client("127.0.0.1", server.port(), kToken, 5000ms);
  cluster::TcpStore other("127.0.0.1", server.port(), kToken, 5000ms);
  check_store_semantics(client, other);
}

TEST(TcpStore, ManyConcurrentClientsCountExactly) {
  cluster::TcpStoreServer server({"127.0.0.1", 0, kToken});
  constexpr int kClients = 32, kAdds = 50;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      try {
        cluster::TcpStore store("127.0.0.1", server.port(), kToken, 5000ms);
        for (int i = 0; i < kAdds; ++i) store.add("total", 1);
        store.set("client/" + std::to_string(c), std::to_string(c * c));
        // Every client waits for every other: a barrier through the store.
        std::vector<std::string> all;
        for (int other = 0; other < kClients; ++other) all.push_back("client/" + std::to_string(other));
        store.wait(all, 20000ms);
        const int peer = (c + 1) % kClients;
        if (store.get("client/" + std::to_string(peer), 1000ms) != std::to_string(peer * peer)) ++failures;
      } catch (const std::exception& error) {
        ADD_FAILURE() << "client " << c << ": " << error.what();
        ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  cluster::TcpStore check("127.0.0.1", server.port(), kToken, 5000ms);
  EXPECT_EQ(check.add("total", 0), kClients * kAdds);
  EXPECT_EQ(server.refused_clients(), 0);
}

TEST(TcpStore, RefusesAClientWithTheWrongToken) {
  cluster::TcpStoreServer server({"127.0.0.1", 0, kToken});
  expect_error_containing([&] { cluster::TcpStore("127.0.0.1", server.port(), "guess", 5000ms); }, "token");
  expect_error_containing([&] { cluster::TcpStore("127.0.0.1", server.port(), "", 5000ms); }, "token");
  EXPECT_EQ(server.refused_clients(), 2);
  // The store still serves the rightful clients.
  cluster::TcpStore good("127.0.0.1", server.port(), kToken, 5000ms);
  good.set("k", "v");
  EXPECT_EQ(good.get("k", 100ms), "v");
}

TEST(TcpStore, RefusesAnOversizedFrameBeforeReadingIt) {
  cluster::TcpStoreServer server({"127.0.0.1", 0, kToken});
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(server.port());
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  const unsigned char huge[4] = {0xff, 0xff, 0xff, 0x7f};  // a 2 GiB frame announced
  ASSERT_EQ(::send(fd, huge, 4, 0), 4);
  char reply[256];
  ssize_t total = 0, got = 0;
  while ((got = ::recv(fd, reply + total, sizeof reply - static_cast<size_t>(total), 0)) > 0) total += got;
  ::close(fd);
  EXPECT_EQ(got, 0) << "the server closes the connection";
  EXPECT_NE(std::string(reply, static_cast<size_t>(total)).find("over the limit"), std::string::npos);
  EXPECT_EQ(server.refused_clients(), 1);
}

TEST(TcpStore, ClientsSeeAGoneServerAsAnErrorNotAHang) {
  auto server = std::make_unique<cluster::TcpStoreServer>(cluster::TcpStoreServerOptions{"127.0.0.1", 0, kToken});
  cluster::TcpStore client("127.0.0.1", server->port(), kToken, 5000ms);
  std::thread stopper([&] {
    std::this_thread::sleep_for(100ms);
    server.reset();
  });
  const auto start = std::chrono::steady_clock::now();
  expect_error_containing([&] { client.get("never-set", 60000ms); }, "rank 0");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  stopper.join();
}

TEST(TcpStore, ConnectRetriesUntilTheServerStartsThenGivesUp) {
  expect_error_containing([] { cluster::TcpStore("127.0.0.1", 1, kToken, 300ms); }, "cannot reach 127.0.0.1:1");
}

TEST(TcpStore, ServerNeedsATokenAndAValidAddress) {
  expect_error_containing([] { cluster::TcpStoreServer({"127.0.0.1", 0, ""}); }, "token");
  expect_error_containing([] { cluster::TcpStoreServer({"not-an-ip", 0, kToken}); }, "not-an-ip");
}

TEST(JobToken, FromTheEnvironmentOrAFile) {
  ::unsetenv("SHARDLORA_STORE_TOKEN");
  ::unsetenv("SHARDLORA_STORE_TOKEN_FILE");
  expect_error_containing([] { cluster::job_token_from_environment(); }, "SHARDLORA_STORE_TOKEN");
  const std::string path = ::testing::TempDir() + "/token.txt";
  { std::ofstream(path) << "from-file\nignored\n"; }
  ::setenv("SHARDLORA_STORE_TOKEN_FILE", path.c_str(), 1);
  EXPECT_EQ(cluster::job_token_from_environment(), "from-file");
  ::setenv("SHARDLORA_STORE_TOKEN", "from-env", 1);
  EXPECT_EQ(cluster::job_token_from_environment(), "from-env");
  ::unsetenv("SHARDLORA_STORE_TOKEN");
  ::unsetenv("SHARDLORA_STORE_TOKEN_FILE");
  const std::string token = cluster::random_token();
  EXPECT_EQ(token.size(), 32u);
  EXPECT_NE(token, cluster::random_token());
}

// ---- a store no client can crash or exhaust ------------------------------------------------

namespace {

int connect_raw(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// True when the server closes `fd` within `limit` (reading and dropping whatever it sends).
bool closed_by_server_within(int fd, std::chrono::milliseconds limit) {
  timeval wait{static_cast<time_t>(limit.count() / 1000), static_cast<suseconds_t>(limit.count() % 1000 * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
  char sink[4096];
  ssize_t got = 0;
  while ((got = ::recv(fd, sink, sizeof sink, 0)) > 0) {
  }
  return got == 0 || (got < 0 && errno == ECONNRESET);
}

std::string frame_of(const std::string& body) {
  std::string frame(4, '\0');
  for (int i = 0; i < 4; ++i) frame[i] = static_cast<char>((body.size() >> (8 * i)) & 0xff);
  return frame + body;
}

// A well-formed request body: op, field count, length-prefixed fields.
std::string request_body(uint8_t op, const std::vector<std::string>& fields) {
  std::string body(1, static_cast<char>(op));
  const auto put = [&](uint32_t value) {
    for (int i = 0; i < 4; ++i) body.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
  };
  put(static_cast<uint32_t>(fields.size()));
  for (const auto& field : fields) {
    put(static_cast<uint32_t>(field.size()));
    body += field;
  }
  return body;
}

void expect_store_serves(uint16_t port, const std::string& key) {
  cluster::TcpStore client("127.0.0.1", port, kToken, 10000ms);
  client.set(key, "alive");
  EXPECT_EQ(client.get(key, 1000ms), "alive");
  EXPECT_EQ(client.add(key + "/n", 2), 2);
}

}  // namespace

TEST(TcpStore, AGetOfAMissingKeyAsLongAsAFrameTimesOutWithoutEndingTheServer) {
  cluster::TcpStoreServer server({"127.0.0.1", 0, kToken});
  cluster::TcpStore client("127.0.0.1", server.port(), kToken, 5000ms);
  // A key too long for the server's limit is refused; one of the longest a frame carries
  // used to make the timeout reply overflow a frame and abort the server.
  expect_error_containing([&] { client.get(std::string(cluster::kMaxFrameBytes - 64, 'k'), 50ms); }, "over the 4096-byte limit");
  EXPECT_THROW(client.wait({std::string(cluster::kMaxKeyBytes, 'k')}, 50ms), dist::TimeoutError);
  expect_store_serves(server.port(), "after-long-keys");
}

TEST(TcpStore, AuthenticatedClientsCannotFillTheServersMemory) {
  cluster::TcpStoreServer server({"127.0.0.1", 0, kToken});
  cluster::TcpStore client("127.0.0.1", server.port(), kToken, 5000ms);
  const std::string value(cluster::kMaxFrameBytes - 4096, 'v');
  int stored = 0;
  try {
    for (; stored < 200; ++stored) client.set("big/" + std::to_string(stored), value);
    ADD_FAILURE() << "200 MiB stored without a limit";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("store: full"), std::string::npos) << error.what();
  }
  EXPECT_LE(static_cast<uint64_t>(stored) * value.size(), cluster::kMaxStoredBytes);
  client.set("big/0", "small");  // replacing a value frees its room
  expect_store_serves(server.port(), "after-filling");
  client.add("counter", INT64_MAX);
  expect_error_containing([&] { client.add("counter", 1); }, "overflow");
}

TEST(TcpStore, StrangersAreCappedAndDroppedAndTheJobStillJoins) {
  cluster::TcpStoreServer server({"127.0.0.1", 0, kToken, 400ms, 8});
  // Silent strangers and strangers announcing a 1 MiB frame, more than the cap.
  std::vector<int> silent, announcing;
  for (int i = 0; i < 40; ++i) silent.push_back(connect_raw(server.port()));
  for (int i = 0; i < 40; ++i) {
    const int fd = connect_raw(server.port());
    const unsigned char length[4] = {0x00, 0x00, 0x10, 0x00};  // 1 MiB follows, never sent
    ::send(fd, length, 4, MSG_NOSIGNAL);
    announcing.push_back(fd);
  }
  // A rank joins meanwhile: turned away while the cap is full, it retries and gets in.
  expect_store_serves(server.port(), "during-the-flood");
  for (int fd : silent) {
    ASSERT_GE(fd, 0);
    EXPECT_TRUE(closed_by_server_within(fd, 3000ms)) << "a silent stranger is dropped after the hello deadline";
    ::close(fd);
  }
  for (int fd : announcing) {
    EXPECT_TRUE(closed_by_server_within(fd, 3000ms)) << "a 1 MiB hello is refused before it is read";
    ::close(fd);
  }
  EXPECT_GE(server.refused_clients(), 80);
  expect_store_serves(server.port(), "after-the-flood");
}

TEST(TcpStore, AcceptingSurvivesRunningOutOfDescriptors) {
  cluster::TcpStoreServer server({"127.0.0.1", 0, kToken, 500ms, 1000});
  rlimit before{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &before), 0);
  // Open descriptors until the table is nearly full, under a lowered limit: the server's
  // accept then fails with EMFILE while connections wait in its backlog.
  int highest = 0;
  for (int fd = 0; fd < 4096; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1) highest = fd;
  }
  rlimit low = before;
  low.rlim_cur = static_cast<rlim_t>(highest + 64);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  std::vector<int> clients;
  for (int fd; (fd = connect_raw(server.port())) >= 0;) clients.push_back(fd);
  std::this_thread::sleep_for(300ms);  // the server's accept meets EMFILE
  for (int fd : clients) ::close(fd);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &before), 0);
  EXPECT_GT(clients.size(), 10u);
  expect_store_serves(server.port(), "after-emfile");
}

TEST(TcpStore, AFuzzingClientCannotEndTheServer) {
  cluster::TcpStoreServer server({"127.0.0.1", 0, kToken, 300ms, 64});
  std::mt19937_64 random(20261201);
  const auto bytes = [&](size_t n) {
    std::string text(n, '\0');
    for (auto& c : text) c = static_cast<char>(random());
    return text;
  };
  const auto number = [&]() -> std::string {
    switch (random() % 5) {
      case 0: return std::to_string(static_cast<int64_t>(random()));
      case 1: return "-" + std::to_string(random() % 1000);
      case 2: return "99999999999999999999999";
      case 3: return bytes(random() % 8);
      default: return std::to_string(random() % 100);
    }
  };
  for (int round = 0; round < 400; ++round) {
    const int fd = connect_raw(server.port());
    ASSERT_GE(fd, 0) << "the server stopped accepting at round " << round;
    std::string sent;
    const bool hello = random() % 3 != 0;
    if (hello) sent += frame_of(request_body(1, {random() % 8 ? std::string(kToken) : bytes(random() % 40)}));
    const int requests = static_cast<int>(random() % 4);
    for (int r = 0; r < requests; ++r) {
      switch (random() % 6) {
        case 0: sent += frame_of(bytes(random() % 64)); break;                       // garbage body
        case 1: sent += frame_of(request_body(static_cast<uint8_t>(random() % 8), {bytes(random() % 16), number()})); break;
        case 2: sent += frame_of(request_body(4, {bytes(random() % 16), number()})); break;  // add: bad counters
        case 3: sent += frame_of(request_body(static_cast<uint8_t>(3 + random() % 3 * 2), {number(), bytes(random() % 9000)})); break;
        case 4: {  // a field count or length that overruns the frame
          std::string body = request_body(2, {"k", "v"});
          body[1 + random() % 8] = static_cast<char>(0xff);
          sent += frame_of(body);
          break;
        }
        default: sent += bytes(random() % 12); break;  // not even a frame
      }
    }
    if (random() % 4 == 0 && !sent.empty()) sent.resize(random() % sent.size());  // cut off mid-frame
    ::send(fd, sent.data(), sent.size(), MSG_NOSIGNAL);
    if (random() % 2) std::this_thread::sleep_for(std::chrono::milliseconds(random() % 3));
    ::close(fd);
  }
  expect_store_serves(server.port(), "after-fuzzing");
  EXPECT_GT(server.refused_clients(), 50);
}
