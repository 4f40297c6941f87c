#include "shardlora/cluster/tcp_communicator.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "shardlora/kernels/check.h"

namespace shardlora::cluster {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int64_t kBroadcastSegmentBytes = 4 << 20;  // pipelined along the ring

class Socket {
 public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket& operator=(Socket&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, 1000));  // wake at least every second
}

// Moves `send_bytes` out on `out` while `recv_bytes` come in on `in` (a ring step does both:
// one after the other could deadlock with both sides' socket buffers full). The peers'
// ranks name who went silent or away.
void exchange(int out, const char* send, int64_t send_bytes, int in, char* recv, int64_t recv_bytes, int next_rank,
              int prev_rank, Clock::time_point deadline, const std::string& what) {
  while (send_bytes > 0 || recv_bytes > 0) {
    pollfd fds[2];
    nfds_t count = 0;
    if (send_bytes > 0) fds[count++] = {out, POLLOUT, 0};
    if (recv_bytes > 0) fds[count++] = {in, POLLIN, 0};
    const int ready = ::poll(fds, count, remaining_ms(deadline));
    if (ready < 0 && errno != EINTR) throw Error(what + ": poll failed: " + std::strerror(errno));
    if (ready <= 0) {
      if (Clock::now() < deadline) continue;
      const bool receiving = recv_bytes > 0;
      throw dist::TimeoutError(detail::concat(what, ": rank ", receiving ? prev_rank : next_rank, receiving ? " sent nothing" : " took nothing",
                                              " within the timeout: it is hung, stopped or gone (distributed.timeout_s)"));
    }
    for (nfds_t i = 0; i < count; ++i) {
      if (fds[i].revents == 0) continue;
      const bool sending = fds[i].fd == out && send_bytes > 0 && (fds[i].events & POLLOUT);
      const ssize_t moved = sending ? ::send(out, send, static_cast<size_t>(send_bytes), MSG_NOSIGNAL)
                                    : ::recv(in, recv, static_cast<size_t>(recv_bytes), 0);
      if (moved < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
      if (moved <= 0) {
        throw Error(detail::concat(what, ": lost rank ", sending ? next_rank : prev_rank,
                                   " (its connection closed: the process exited or was killed)"));
      }
      if (sending) {
        send += moved;
        send_bytes -= moved;
      } else {
        recv += moved;
        recv_bytes -= moved;
      }
    }
  }
}

Socket listen_on_any_port(uint16_t* port) {
  Socket s(::socket(AF_INET, SOCK_STREAM, 0));
  SHARDLORA_CHECK(s.fd() >= 0, "tcp communicator: socket: ", std::strerror(errno));
  const int one = 1;
  ::setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_ANY);
  SHARDLORA_CHECK(::bind(s.fd(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 && ::listen(s.fd(), 16) == 0,
                  "tcp communicator: cannot listen: ", std::strerror(errno));
  socklen_t length = sizeof address;
  ::getsockname(s.fd(), reinterpret_cast<sockaddr*>(&address), &length);
  *port = ntohs(address.sin_port);
  return s;
}

Socket connect_to(const std::string& host, const std::string& port, Clock::time_point deadline, const std::string& who) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int status = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found);
  SHARDLORA_CHECK(status == 0 && found, "tcp communicator: cannot resolve ", who, " at ", host, ":", port, ": ", ::gai_strerror(status));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> addresses(found, &::freeaddrinfo);
  while (true) {
    Socket s(::socket(AF_INET, SOCK_STREAM, 0));
    if (::connect(s.fd(), found->ai_addr, found->ai_addrlen) == 0) return s;
    SHARDLORA_CHECK(Clock::now() < deadline, "tcp communicator: cannot connect to ", who, " at ", host, ":", port, ": ",
                    std::strerror(errno));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// A ring connection opens with: u32 token length, the token, i32 the sender's rank.
std::string hello(const std::string& token, int rank) {
  std::string bytes(4 + token.size() + 4, '\0');
  const auto length = static_cast<uint32_t>(token.size());
  std::memcpy(bytes.data(), &length, 4);
  std::memcpy(bytes.data() + 4, token.data(), token.size());
  std::memcpy(bytes.data() + 4 + token.size(), &rank, 4);
  return bytes;
}

class TcpWork : public dist::Work {
 public:
  TcpWork(std::shared_future<void> done, dist::Milliseconds timeout, std::string what)
      : done_(std::move(done)), timeout_(timeout), what_(std::move(what)) {}
  void wait() override {
    // The worker gives up on a silent peer at the deadline itself, naming it; this bound
    // only covers a worker stuck behind earlier work.
    if (done_.wait_for(timeout_ * 2 + std::chrono::seconds(5)) != std::future_status::ready) {
      throw dist::TimeoutError(what_ + " did not complete: the communicator is stuck");
    }
    done_.get();
  }

 private:
  std::shared_future<void> done_;
  dist::Milliseconds timeout_;
  std::string what_;
};

class TcpCommunicator : public dist::Communicator {
 public:
  TcpCommunicator(dist::Store& store, const TcpCommunicatorOptions& options) : rank_(options.rank), world_(options.world_size) {
    timeout_ = options.timeout;
    if (world_ > 1) connect_ring(store, options);
    worker_ = std::thread([this] { work(); });
  }

  ~TcpCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    worker_.join();
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend_name() const override { return "tcp"; }

  std::unique_ptr<dist::Work> allreduce_async(torch::Tensor tensor, dist::ReduceOp op) override {
    check_collective_shapes(dist::Collective::AllReduce, tensor, tensor, tensor.numel());
    check_reducible(tensor, "allreduce");
    return submit(dist::Collective::AllReduce, tensor.nbytes(),
                  [this, tensor, op](const std::string& what) { ring_allreduce(tensor, op, what); });
  }

  std::unique_ptr<dist::Work> allgather_async(torch::Tensor input, torch::Tensor output) override {
    check_collective_shapes(dist::Collective::AllGather, input, output, input.numel() * world_);
    return submit(dist::Collective::AllGather, output.nbytes(), [this, input, output](const std::string& what) {
      const auto chunks = split(output);
      chunks[static_cast<size_t>(rank_)].copy_(input);
      allgather_ring(chunks, what);
    });
  }

  std::unique_ptr<dist::Work> reduce_scatter_async(torch::Tensor input, torch::Tensor output, dist::ReduceOp op) override {
    check_reduce_scatter(input, output);
    check_reducible(input, "reduce_scatter");
    return submit(dist::Collective::ReduceScatter, input.nbytes(), [this, input, output, op](const std::string& what) {
      const auto chunks = split(input.clone());
      reduce_scatter_ring(chunks, op, what);
      output.copy_(chunks[static_cast<size_t>(rank_)]);
    });
  }

  std::unique_ptr<dist::Work> broadcast_async(torch::Tensor tensor, int root) override {
    check_root(root);
    check_collective_shapes(dist::Collective::Broadcast, tensor, tensor, tensor.numel());
    return submit(dist::Collective::Broadcast, tensor.nbytes(), [this, tensor, root](const std::string& what) {
      auto* bytes = static_cast<char*>(tensor.data_ptr());
      const bool forwards = (rank_ + 1) % world_ != root;
      for (int64_t at = 0; at < static_cast<int64_t>(tensor.nbytes()); at += kBroadcastSegmentBytes) {
        const int64_t length = std::min<int64_t>(kBroadcastSegmentBytes, static_cast<int64_t>(tensor.nbytes()) - at);
        if (rank_ != root) step(nullptr, 0, bytes + at, length, what);
        if (forwards) step(bytes + at, length, nullptr, 0, what);
      }
    });
  }

  void barrier() override {
    submit(dist::Collective::Barrier, 0, [this](const std::string& what) {
      ring_allreduce(torch::zeros({world_}, torch::kInt64), dist::ReduceOp::Sum, what);
    })->wait();
  }

 private:
  void connect_ring(dist::Store& store, const TcpCommunicatorOptions& options) {
    const auto deadline = Clock::now() + options.timeout;
    uint16_t port = 0;
    Socket listener = listen_on_any_port(&port);
    const std::string prefix = options.key_prefix + "/addr/";
    store.set(prefix + std::to_string(rank_), options.advertise_host + ":" + std::to_string(port));
    next_rank_ = (rank_ + 1) % world_;
    prev_rank_ = (rank_ + world_ - 1) % world_;
    const std::string next_address = store.get(prefix + std::to_string(next_rank_), options.timeout);
    const auto colon = next_address.rfind(':');
    next_ = connect_to(next_address.substr(0, colon), next_address.substr(colon + 1), deadline,
                       "rank " + std::to_string(next_rank_));
    const std::string greeting = hello(options.token, rank_);
    SHARDLORA_CHECK(::send(next_.fd(), greeting.data(), greeting.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(greeting.size()),
                    "tcp communicator: cannot greet rank ", next_rank_, ": ", std::strerror(errno));
    // Accept until the previous rank presents the token; anyone else is dropped.
    const std::string expected = hello(options.token, prev_rank_);
    while (true) {
      pollfd fd{listener.fd(), POLLIN, 0};
      SHARDLORA_CHECK(Clock::now() < deadline, "tcp communicator: rank ", prev_rank_, " never connected to rank ", rank_,
                      " within distributed.timeout_s");
      if (::poll(&fd, 1, remaining_ms(deadline)) <= 0) continue;
      Socket peer(::accept(listener.fd(), nullptr, nullptr));
      if (peer.fd() < 0) continue;
      set_nonblocking(peer.fd());
      std::string received(expected.size(), '\0');
      try {
        exchange(-1, nullptr, 0, peer.fd(), received.data(), static_cast<int64_t>(received.size()), next_rank_, prev_rank_,
                 std::min(deadline, Clock::now() + std::chrono::seconds(10)), "ring greeting");
      } catch (const Error&) {
        continue;
      }
      if (received != expected) continue;
      prev_ = std::move(peer);
      break;
    }
    set_nonblocking(next_.fd());
    const int one = 1;
    for (int fd : {next_.fd(), prev_.fd()}) ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }

  static void check_reducible(const torch::Tensor& tensor, const char* name) {
    const auto type = tensor.scalar_type();
    SHARDLORA_CHECK(type == torch::kFloat32 || type == torch::kFloat64 || type == torch::kInt64 || type == torch::kInt32, name,
                    ": the tcp backend reduces float32, float64, int32 and int64, not ", c10::toString(type));
  }

  // world_ contiguous chunks of a 1-D view, as even as the element count allows.
  std::vector<torch::Tensor> split(const torch::Tensor& tensor) const {
    const torch::Tensor flat = tensor.view({-1});
    std::vector<torch::Tensor> chunks;
    for (int i = 0; i < world_; ++i) {
      const int64_t begin = flat.numel() * i / world_, end = flat.numel() * (i + 1) / world_;
      chunks.push_back(flat.narrow(0, begin, end - begin));
    }
    return chunks;
  }

  int ring_index(int offset) const { return ((rank_ + offset) % world_ + world_) % world_; }

  void step(const void* send, int64_t send_bytes, void* recv, int64_t recv_bytes, const std::string& what) {
    exchange(next_.fd(), static_cast<const char*>(send), send_bytes, prev_.fd(), static_cast<char*>(recv), recv_bytes, next_rank_,
             prev_rank_, Clock::now() + timeout_, what);
  }

  void ring_allreduce(const torch::Tensor& tensor, dist::ReduceOp op, const std::string& what) {
    const auto chunks = split(tensor);
    reduce_scatter_ring(chunks, op, what);
    allgather_ring(chunks, what);
  }

  // After N-1 steps chunk r holds every rank's contribution on rank r: chunk c starts at
  // rank c+1 and gathers one contribution per hop.
  void reduce_scatter_ring(const std::vector<torch::Tensor>& chunks, dist::ReduceOp op, const std::string& what) {
    for (int s = 0; s < world_ - 1; ++s) {
      const torch::Tensor& out = chunks[static_cast<size_t>(ring_index(-s - 1))];
      const torch::Tensor& in = chunks[static_cast<size_t>(ring_index(-s - 2))];
      torch::Tensor received = torch::empty_like(in);
      step(out.data_ptr(), static_cast<int64_t>(out.nbytes()), received.data_ptr(), static_cast<int64_t>(received.nbytes()), what);
      if (op == dist::ReduceOp::Sum) {
        in.add_(received);
      } else {
        in.copy_(torch::maximum(in, received));
      }
    }
  }

  // Chunk r is complete on rank r; each step passes the newest complete chunk on.
  void allgather_ring(const std::vector<torch::Tensor>& chunks, const std::string& what) {
    for (int s = 0; s < world_ - 1; ++s) {
      const torch::Tensor& out = chunks[static_cast<size_t>(ring_index(-s))];
      const torch::Tensor& in = chunks[static_cast<size_t>(ring_index(-s - 1))];
      step(out.data_ptr(), static_cast<int64_t>(out.nbytes()), in.data_ptr(), static_cast<int64_t>(in.nbytes()), what);
    }
  }

  struct Task {
    std::string what;
    std::function<void(const std::string&)> run;
    std::promise<void> done;
  };

  std::unique_ptr<dist::Work> submit(dist::Collective kind, int64_t bytes, std::function<void(const std::string&)> run) {
    const int64_t sequence = account(kind, bytes);
    auto task = std::make_shared<Task>();
    task->what = detail::concat(dist::collective_name(kind), " #", sequence, " (", bytes, " bytes)");
    task->run = std::move(run);
    auto work = std::make_unique<TcpWork>(task->done.get_future().share(), timeout_, task->what);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(task));
    }
    wake_.notify_all();
    return work;
  }

  // Runs collectives in issue order. After a failure the ring is unusable: every later
  // collective fails with the first error.
  void work() {
    std::string broken;
    while (true) {
      std::shared_ptr<Task> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      try {
        SHARDLORA_CHECK(broken.empty(), task->what, ": the ring failed earlier: ", broken);
        task->run(task->what);
        task->done.set_value();
      } catch (...) {
        if (broken.empty()) {
          try {
            throw;
          } catch (const std::exception& error) {
            broken = error.what();
          }
        }
        task->done.set_exception(std::current_exception());
      }
    }
  }

  int rank_, world_;
  int next_rank_ = 0, prev_rank_ = 0;
  Socket next_, prev_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Task>> queue_;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace

std::unique_ptr<dist::Communicator> make_tcp_communicator(dist::Store& store, const TcpCommunicatorOptions& options) {
  SHARDLORA_CHECK(options.world_size >= 1 && options.rank >= 0 && options.rank < options.world_size, "tcp communicator: rank ",
                  options.rank, " of ", options.world_size);
  return std::make_unique<TcpCommunicator>(store, options);
}

}  // namespace shardlora::cluster
