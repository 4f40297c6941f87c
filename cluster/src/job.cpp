#include "shardlora/cluster/job.h"

#include <cstdio>
#include <cstdlib>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <sstream>
#include <thread>

#include "shardlora/cluster/env_vars.h"
#include "shardlora/cluster/tcp_communicator.h"
#include "shardlora/cluster/tcp_store.h"
#include "shardlora/dist/mpi_communicator.h"
#include "shardlora/dist/nccl_communicator.h"
#include "shardlora/dist/watchdog.h"

namespace shardlora::cluster {
namespace {

bool launched_by_mpi(const LaunchEnv& launch) {
  return launch.source == LaunchSource::OpenMpi || launch.source == LaunchSource::MpichPmi;
}

struct StoreAddress {
  std::string host;
  uint16_t port = 0;
};

// SHARDLORA_STORE_ADDR (host:port), which `backend` needs outside mpirun.
StoreAddress store_address(const std::string& backend) {
  const char* address = std::getenv(env::kStoreAddress);
  SHARDLORA_CHECK(address && *address, "distributed.backend ", backend, " outside mpirun needs the rendezvous store: ", env::kStoreAddress,
                  " is not set (start the job with shardlora launch, under mpirun, or from the batch script shardlora slurm writes)");
  const std::string text = address;
  const auto colon = text.rfind(':');
  SHARDLORA_CHECK(colon != std::string::npos && colon > 0, env::kStoreAddress, "='", text, "' is not host:port");
  const int port = std::atoi(text.c_str() + colon + 1);
  SHARDLORA_CHECK(port > 0 && port < 65536, env::kStoreAddress, "='", text, "': port is not in 1..65535");
  return {text.substr(0, colon), static_cast<uint16_t>(port)};
}

std::unique_ptr<dist::Store> connect_store(const StoreAddress& address, const std::string& token, dist::Milliseconds timeout,
                                           dist::Milliseconds reply_grace = dist::Milliseconds(30000)) {
  return std::make_unique<TcpStore>(address.host, address.port, token, timeout, reply_grace);
}

// A store for a job under mpirun, where no launcher serves one: rank 0 serves it (on
// SHARDLORA_STORE_BIND's interface or all, a port the OS picks, a fresh token) and the
// address and token reach the others by MPI broadcast; ranks on rank 0's host use loopback.
struct MpiServedStore {
  std::unique_ptr<TcpStoreServer> server;  // rank 0 only
  StoreAddress address;
  std::string token;
};

MpiServedStore serve_store_over_mpi(dist::Communicator& mpi, const std::string& hostname) {
  MpiServedStore served;
  std::string announcement;  // host \n port \n token
  if (mpi.rank() == 0) {
    const char* bind = std::getenv(env::kStoreBind);
    served.token = random_token();
    served.server = std::make_unique<TcpStoreServer>(
        TcpStoreServerOptions{.bind_address = bind && *bind ? bind : "0.0.0.0", .port = 0, .token = served.token});
    announcement = hostname + "\n" + std::to_string(served.server->port()) + "\n" + served.token;
  }
  auto bytes = torch::zeros({512}, torch::kUInt8);
  std::memcpy(bytes.data_ptr(), announcement.data(), std::min<size_t>(announcement.size(), 511));
  mpi.broadcast(bytes, 0);
  std::istringstream lines(std::string(static_cast<const char*>(bytes.data_ptr())));
  std::string host, port;
  std::getline(lines, host);
  std::getline(lines, port);
  std::getline(lines, served.token);
  served.address = {host == hostname ? "127.0.0.1" : host, static_cast<uint16_t>(std::stoi(port))};
  return served;
}

// What a rank does when its watchdog reports a lost rank: say so and exit, even while the
// main thread is blocked in a collective; the launcher (or mpirun) stops the rest.
void exit_on_lost_rank(int rank, int world_size, const std::string& why) {
  std::fprintf(stderr, "shardlora (rank %d of %d): %s\n", rank, world_size, why.c_str());
  std::fflush(stderr);
  std::_Exit(1);
}

// How the other ranks reach this one: over loopback when the store is on this host's
// loopback (a single-node launch), else by host name.
std::string advertised_host(const StoreAddress& store, const std::string& hostname) {
  if (store.host == "localhost" || store.host.rfind("127.", 0) == 0) return "127.0.0.1";
  return hostname;
}

// Until every rank has joined (MPI initialised, the store reached, the watchdog beating) no
// heartbeat can name a missing rank, and a rank stopped or dead before it joined would keep
// the others in MPI_Init for good: past `limit` this rank says so and exits, and the
// launcher stops the rest.
class JoinDeadline {
 public:
  JoinDeadline(const LaunchEnv& launch, dist::Milliseconds limit) {
    thread_ = std::thread([this, launch, limit] {
      std::unique_lock<std::mutex> lock(mutex_);
      if (joined_cv_.wait_for(lock, limit, [this] { return joined_; })) return;
      std::fprintf(stderr,
                   "shardlora (rank %d of %d): the job did not assemble within %.0f s (distributed.timeout_s): a rank was "
                   "stopped or killed before it joined, or its host is unreachable\n",
                   launch.rank, launch.world_size, std::chrono::duration<double>(limit).count());
      std::fflush(stderr);
      std::_Exit(1);
    });
  }
  ~JoinDeadline() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      joined_ = true;
    }
    joined_cv_.notify_all();
    thread_.join();
  }
  JoinDeadline(const JoinDeadline&) = delete;
  JoinDeadline& operator=(const JoinDeadline&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable joined_cv_;
  bool joined_ = false;
  std::thread thread_;
};

}  // namespace

std::string resolve_backend(const std::string& backend, bool on_gpu, const LaunchEnv& launch) {
  if (backend != "auto") return backend;
  if (on_gpu) return "nccl";
  return launched_by_mpi(launch) ? "mpi" : "tcp";
}

torch::Device rank_device(const std::string& choice, const LaunchEnv& launch, int visible_gpus) {
  SHARDLORA_CHECK(choice == "auto" || choice == "cpu" || choice == "cuda", "training.device '", choice, "' is not one of auto, cpu, cuda");
  if (choice == "cpu" || (choice == "auto" && visible_gpus == 0)) return torch::kCPU;
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::string visible_text = std::string("CUDA_VISIBLE_DEVICES=") + (visible ? visible : "unset");
  SHARDLORA_CHECK(visible_gpus > 0, "training.device is cuda, but this process sees no GPU (", visible_text,
                  "; a libtorch built without CUDA sees none)");
  if (launch.local_rank < visible_gpus) return {torch::kCUDA, static_cast<c10::DeviceIndex>(launch.local_rank)};
  if (visible_gpus == 1 && launch.source == LaunchSource::Slurm) return {torch::kCUDA, 0};
  throw Error("local rank " + std::to_string(launch.local_rank) + " (rank " + std::to_string(launch.rank) + " of " +
              std::to_string(launch.world_size) + ") has no GPU of its own: this process sees " + std::to_string(visible_gpus) +
              " (" + visible_text + "); start at most " + std::to_string(visible_gpus) +
              " ranks per node, or train on the CPU with training.device=cpu");
}

std::unique_ptr<Job> Job::join(const JobOptions& options, const LaunchEnv& launch) {
  std::unique_ptr<Job> job(new Job);
  job->launch_ = launch;
  if (launch.world_size == 1) return job;
  const JoinDeadline deadline(launch, options.timeout);
  const bool on_gpu = options.device.is_cuda();
  const std::string backend = resolve_backend(options.backend, on_gpu, launch);
  if (launch.source == LaunchSource::Slurm && launch.rank == 0 && backend != "mpi") {
    // srun starts the ranks directly, so no launcher serves the store: rank 0 does, at the
    // address and with the token the batch script exported to every task.
    const StoreAddress address = store_address(backend);
    const char* bind = std::getenv(env::kStoreBind);
    job->store_server_ = std::make_unique<TcpStoreServer>(TcpStoreServerOptions{
        .bind_address = bind && *bind ? bind : "0.0.0.0", .port = address.port, .token = job_token_from_environment()});
  }
  if (backend == "mpi") {
    SHARDLORA_CHECK(!on_gpu, "distributed.backend mpi moves CPU tensors; this model runs on a GPU: use nccl or auto");
    SHARDLORA_CHECK(launched_by_mpi(launch), "distributed.backend mpi needs an MPI launcher (mpirun / mpiexec), but this rank was started by ",
                    launch_source_name(launch.source), " with world size ", launch.world_size);
    auto comm = std::make_unique<dist::MpiCommunicator>();
    job->mpi_ = true;
    SHARDLORA_CHECK(comm->rank() == launch.rank && comm->world_size() == launch.world_size, "MPI says rank ", comm->rank(), " of ",
                    comm->world_size(), " but the environment (", launch_source_name(launch.source), ") says rank ", launch.rank,
                    " of ", launch.world_size);
    job->comm_ = std::move(comm);
  } else if (backend == "nccl") {
    SHARDLORA_CHECK(on_gpu, "distributed.backend nccl needs the model on a GPU (this run is on the CPU)");
    std::string id;
    if (launched_by_mpi(launch)) {
      // The id rides an MPI broadcast; MPI is then only the bootstrap.
      dist::MpiCommunicator bootstrap;
      job->mpi_ = true;
      auto bytes = torch::zeros({128}, torch::kUInt8);
      if (launch.rank == 0) {
        const std::string mine = dist::nccl_unique_id();
        std::memcpy(bytes.data_ptr(), mine.data(), std::min<size_t>(mine.size(), 128));
      }
      bootstrap.broadcast(bytes, 0);
      id.assign(static_cast<const char*>(bytes.data_ptr()), 128);
    } else {
      job->store_ = connect_store(store_address(backend), job_token_from_environment(), options.timeout);
      if (launch.rank == 0) job->store_->set("nccl/unique_id", dist::nccl_unique_id());
      id = job->store_->get("nccl/unique_id", options.timeout);
    }
    job->comm_ = dist::make_nccl_communicator(launch.rank, launch.world_size, options.device.index(), id, options.timeout);
  } else if (backend == "tcp") {
    SHARDLORA_CHECK(!on_gpu, "distributed.backend tcp moves CPU tensors; this model runs on a GPU: use nccl or auto");
    const StoreAddress address = store_address(backend);
    job->store_ = connect_store(address, job_token_from_environment(), options.timeout);
    job->comm_ = make_tcp_communicator(*job->store_, {.rank = launch.rank, .world_size = launch.world_size,
                                                      .token = job_token_from_environment(),
                                                      .advertise_host = advertised_host(address, launch.hostname), .timeout = options.timeout});
  } else {
    throw Error("distributed.backend '" + backend + "' is not one of auto, mpi, nccl, tcp");
  }
  job->comm_->set_timeout(options.timeout);
  job->start_watchdog(options, backend);
  return job;
}

void Job::start_watchdog(const JobOptions& options, const std::string& backend) {
  StoreAddress address;
  std::string token, owner;
  if (mpi_) {
    dist::MpiCommunicator mpi;
    MpiServedStore served = serve_store_over_mpi(mpi, launch_.hostname);
    store_server_ = std::move(served.server);
    address = served.address;
    token = served.token;
    owner = "rank 0 (it serves the job's store under mpirun)";
  } else {
    address = store_address(backend);
    token = job_token_from_environment();
    owner = "the rendezvous store at " + address.host + ":" + std::to_string(address.port);
  }
  watchdog_limit_ = std::max(options.timeout / 2, dist::Milliseconds(1000));
  // A store that stops answering (its rank stopped) is lost as soon as a silent rank would be.
  watchdog_store_ = connect_store(address, token, options.timeout, watchdog_limit_);
  const dist::Watchdog::Options watch{.rank = launch_.rank, .world_size = launch_.world_size,
                                      .silence_limit = watchdog_limit_, .store_owner = owner};
  watchdog_ = std::make_unique<dist::Watchdog>(*watchdog_store_, watch, [rank = launch_.rank, world = launch_.world_size](
                                                                          const std::string& why) { exit_on_lost_rank(rank, world, why); });
}

Job::~Job() {
  if (!watchdog_) return;
  watchdog_.reset();  // says goodbye
  if (!store_server_) return;
  // The others' watchdogs still use the store this rank serves: wait for their goodbyes (at
  // most as long as they would take to notice a silent rank) before it closes.
  const auto deadline = std::chrono::steady_clock::now() + watchdog_limit_;
  try {
    for (int rank = 0; rank < launch_.world_size; ++rank) {
      while (watchdog_store_->peek(dist::Watchdog::beat_key(rank), "") != dist::Watchdog::kGoodbye &&
             std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(dist::Milliseconds(20));
      }
    }
  } catch (const std::exception&) {
    // Ending anyway.
  }
}

void Job::abort(int exit_code) {
  if (mpi_) dist::mpi_abort(exit_code);
  std::_Exit(exit_code);
}

}  // namespace shardlora::cluster
