// The MPI backend: collectives on CPU tensors through non-blocking MPI (MPI_Iallreduce, ...)
// on a private duplicate of MPI_COMM_WORLD, so a timeout can be enforced by polling.
// Reductions take float32, float64, int32 and int64; all-gather and broadcast move any dtype
// as bytes. Calls from several threads are serialized (MPI_THREAD_SERIALIZED).
#pragma once

#include <functional>
#include <mutex>

#include "shardlora/dist/communicator.h"

namespace shardlora::dist {

// Initializes MPI on first use (MPI_THREAD_SERIALIZED) and finalizes it at process exit.
// MPI_Abort when a rank gives up: mpirun then stops every other rank at once.
void ensure_mpi_initialized();
[[noreturn]] void mpi_abort(int exit_code);

class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator();  // initializes MPI if needed
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string backend_name() const override { return "mpi"; }

  std::unique_ptr<Work> allreduce_async(torch::Tensor tensor, ReduceOp op) override;
  std::unique_ptr<Work> allgather_async(torch::Tensor input, torch::Tensor output) override;
  std::unique_ptr<Work> reduce_scatter_async(torch::Tensor input, torch::Tensor output, ReduceOp op) override;
  std::unique_ptr<Work> broadcast_async(torch::Tensor tensor, int root) override;
  void barrier() override;

 private:
  class MpiWork;
  // Counts the call, then issues it (`issue` gets the MPI_Request* to fill) under the mutex.
  std::unique_ptr<Work> start(Collective kind, int64_t bytes, std::vector<torch::Tensor> tensors, const char* call,
                              const std::function<int(void* request)>& issue);
  void* comm_ = nullptr;  // MPI_Comm, kept out of this header
  int rank_ = 0, world_size_ = 1;
  std::mutex mutex_;
};

}  // namespace shardlora::dist
