#include "shardlora/cluster/job.h"

#include <cstdlib>
#include <cstring>

#include "shardlora/cluster/env_vars.h"
#include "shardlora/cluster/tcp_store.h"
#include "shardlora/dist/mpi_communicator.h"
#include "shardlora/dist/nccl_communicator.h"

namespace shardlora::cluster {
namespace {

bool launched_by_mpi(const LaunchEnv& launch) {
  return launch.source == LaunchSource::OpenMpi || launch.source == LaunchSource::MpichPmi;
}

// The store named by SHARDLORA_STORE_ADDR (host:port), with the job token.
std::unique_ptr<dist::Store> connect_store(dist::Milliseconds timeout) {
  const char* address = std::getenv(env::kStoreAddress);
  SHARDLORA_CHECK(address && *address, "distributed.backend nccl outside mpirun needs the rendezvous store: ", env::kStoreAddress,
                  " is not set (start the job with shardlora launch, or under mpirun)");
  const std::string text = address;
  const auto colon = text.rfind(':');
  SHARDLORA_CHECK(colon != std::string::npos && colon > 0, env::kStoreAddress, "='", text, "' is not host:port");
  const int port = std::atoi(text.c_str() + colon + 1);
  SHARDLORA_CHECK(port > 0 && port < 65536, env::kStoreAddress, "='", text, "': port is not in 1..65535");
  return std::make_unique<TcpStore>(text.substr(0, colon), static_cast<uint16_t>(port), job_token_from_environment(), timeout);
}

}  // namespace

std::string resolve_backend(const std::string& backend, bool on_gpu) {
  if (backend != "auto") return backend;
  return on_gpu ? "nccl" : "mpi";
}

std::unique_ptr<Job> Job::join(const JobOptions& options, const LaunchEnv& launch) {
  std::unique_ptr<Job> job(new Job);
  job->launch_ = launch;
  if (launch.world_size == 1) return job;
  const std::string backend = resolve_backend(options.backend, options.on_gpu);
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
      job->store_ = connect_store(options.timeout);
      if (launch.rank == 0) job->store_->set("nccl/unique_id", dist::nccl_unique_id());
      id = job->store_->get("nccl/unique_id", options.timeout);
    }
    job->comm_ = dist::make_nccl_communicator(launch.rank, launch.world_size, launch.local_rank, id, options.timeout);
  } else {
    throw Error("distributed.backend '" + backend + "' is not one of auto, mpi, nccl");
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
