// The distributed side of one process: who it is (LaunchEnv), and the communicator it
// trains with, chosen by distributed.backend:
//   auto  NCCL when the model is on a GPU; on the CPU MPI under an MPI launcher, else tcp
//   mpi   needs an MPI launcher (mpirun / mpiexec); MPI's own ranks must agree with the
//         launch environment
//   nccl  the unique id travels by MPI broadcast under mpirun, else through the TCP store
//         at SHARDLORA_STORE_ADDR (shardlora launch serves it)
//   tcp   CPU tensors over a ring of sockets (cluster/tcp_communicator.h), rendezvous
//         through the TCP store: what a job started by shardlora launch uses on CPUs
// A single process gets no communicator at all: single-rank training never touches MPI.
//
// Every rank of a distributed job runs a heartbeat watchdog (dist/watchdog.h) over its own
// connection to the job's store (the launcher's; under mpirun rank 0 serves one; under srun
// rank 0 serves it at SHARDLORA_STORE_ADDR, which the batch script sets): a rank
// silent for half of the timeout is named and every rank exits with status 1.
#pragma once

#include <torch/cuda.h>

#include <memory>
#include <string>

#include "shardlora/cluster/launch_env.h"
#include "shardlora/dist/communicator.h"
#include "shardlora/dist/watchdog.h"

namespace shardlora::cluster {

class TcpStoreServer;

struct JobOptions {
  std::string backend = "auto";      // distributed.backend
  torch::Device device = torch::kCPU;  // where this rank's model runs (rank_device)
  dist::Milliseconds timeout{300000};  // distributed.timeout_s, for every collective; half of it for the watchdog
};

class Job {
 public:
  // Throws Error naming the variable or setting when the environment and backend disagree.
  static std::unique_ptr<Job> join(const JobOptions& options, const LaunchEnv& launch = detect_launch_env());
  ~Job();

  const LaunchEnv& launch() const { return launch_; }
  bool distributed() const { return launch_.world_size > 1; }
  dist::Communicator* communicator() { return comm_.get(); }  // null on one rank
  // The store of the job when it has one (NCCL without MPI), else null.
  dist::Store* store() { return store_.get(); }

  // Ends the job after an error on this rank: under an MPI launcher MPI_Abort takes every
  // rank down at once; otherwise the process exits and the launcher stops the others.
  [[noreturn]] void abort(int exit_code);

 private:
  Job() = default;
  void start_watchdog(const JobOptions& options, const std::string& backend);

  LaunchEnv launch_;
  std::unique_ptr<dist::Store> store_;
  std::unique_ptr<dist::Communicator> comm_;
  bool mpi_ = false;
  std::unique_ptr<TcpStoreServer> store_server_;  // under mpirun, on rank 0
  std::unique_ptr<dist::Store> watchdog_store_;
  std::unique_ptr<dist::Watchdog> watchdog_;
  dist::Milliseconds watchdog_limit_{0};
};

// "auto" resolved: "nccl" on a GPU; on the CPU "mpi" under an MPI launcher, else "tcp".
std::string resolve_backend(const std::string& backend, bool on_gpu, const LaunchEnv& launch);

// This rank's device for training.device: "cpu"; "cuda": the GPU numbered by its local rank
// among the visible ones, or the only one visible under Slurm (srun's --gpus-per-task and
// --gpu-bind show each task its own GPU as device 0); "auto": cuda when a GPU is visible,
// else cpu. Never rank % GPUs: a local rank without a GPU of its own is an error.
torch::Device rank_device(const std::string& choice, const LaunchEnv& launch,
                          int visible_gpus = static_cast<int>(torch::cuda::device_count()));

}  // namespace shardlora::cluster
