#include "shardlora/cluster/job.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "shardlora/cluster/env_vars.h"
#include "shardlora/cluster/tcp_communicator.h"
#include "shardlora/cluster/tcp_store.h"
#include "shardlora/dist/mpi_communicator.h"
#include "shardlora/dist/nccl_communicator.h"

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
                  " is not set (start the job with shardlora launch, or under mpirun)");
  const std::string text = address;
  const auto colon = text.rfind(':');
  SHARDLORA_CHECK(colon != std::string::npos && colon > 0, env::kStoreAddress, "='", text, "' is not host:port");
  const int port = std::atoi(text.c_str() + colon + 1);
  SHARDLORA_CHECK(port > 0 && port < 65536, env::kStoreAddress, "='", text, "': port is not in 1..65535");
  return {text.substr(0, colon), static_cast<uint16_t>(port)};
}

std::unique_ptr<dist::Store> connect_store(const StoreAddress& address, dist::Milliseconds timeout) {
  return std::make_unique<TcpStore>(address.host, address.port, job_token_from_environment(), timeout);
}

// How the other ranks reach this one: over loopback when the store is on this host's
// loopback (a single-node launch), else by host name.
std::string advertised_host(const StoreAddress& store) {
  if (store.host == "localhost" || store.host.rfind("127.", 0) == 0) return "127.0.0.1";
  char name[256] = {};
  SHARDLORA_CHECK(::gethostname(name, sizeof name - 1) == 0, "gethostname failed");
  return name;
}

}  // namespace

std::string resolve_backend(const std::string& backend, bool on_gpu, const LaunchEnv& launch) {
  if (backend != "auto") return backend;
  if (on_gpu) return "nccl";
  return launched_by_mpi(launch) ? "mpi" : "tcp";
}

std::unique_ptr<Job> Job::join(const JobOptions& options, const LaunchEnv& launch) {
  std::unique_ptr<Job> job(new Job);
  job->launch_ = launch;
  if (launch.world_size == 1) return job;
  const std::string backend = resolve_backend(options.backend, options.on_gpu, launch);
  if (backend == "mpi") {
    SHARDLORA_CHECK(!options.on_gpu, "distributed.backend mpi moves CPU tensors; this model runs on a GPU: use nccl or auto");
    SHARDLORA_CHECK(launched_by_mpi(launch), "distributed.backend mpi needs an MPI launcher (mpirun / mpiexec), but this rank was started by ",
                    launch_source_name(launch.source), " with world size ", launch.world_size);
    auto comm = std::make_unique<dist::MpiCommunicator>();
    job->mpi_ = true;
    SHARDLORA_CHECK(comm->rank() == launch.rank && comm->world_size() == launch.world_size, "MPI says rank ", comm->rank(), " of ",
                    comm->world_size(), " but the environment (", launch_source_name(launch.source), ") says rank ", launch.rank,
                    " of ", launch.world_size);
    job->comm_ = std::move(comm);
  } else if (backend == "nccl") {
    SHARDLORA_CHECK(options.on_gpu, "distributed.backend nccl needs the model on a GPU (this run is on the CPU)");
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
      job->store_ = connect_store(store_address(backend), options.timeout);
      if (launch.rank == 0) job->store_->set("nccl/unique_id", dist::nccl_unique_id());
      id = job->store_->get("nccl/unique_id", options.timeout);
    }
    job->comm_ = dist::make_nccl_communicator(launch.rank, launch.world_size, launch.local_rank, id, options.timeout);
  } else if (backend == "tcp") {
    SHARDLORA_CHECK(!options.on_gpu, "distributed.backend tcp moves CPU tensors; this model runs on a GPU: use nccl or auto");
    const StoreAddress address = store_address(backend);
    job->store_ = connect_store(address, options.timeout);
    job->comm_ = make_tcp_communicator(*job->store_, {.rank = launch.rank, .world_size = launch.world_size,
                                                      .token = job_token_from_environment(),
                                                      .advertise_host = advertised_host(address), .timeout = options.timeout});
  } else {
    throw Error("distributed.backend '" + backend + "' is not one of auto, mpi, nccl, tcp");
  }
  job->comm_->set_timeout(options.timeout);
  return job;
}

Job::~Job() = default;

void Job::abort(int exit_code) {
  if (mpi_) dist::mpi_abort(exit_code);
  std::_Exit(exit_code);
}

}  // namespace shardlora::cluster
