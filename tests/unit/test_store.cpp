// The rendezvous stores: the in-memory one and the TCP one rank 0 serves (real sockets on a
// loopback port the OS picks).
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <chrono>
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
