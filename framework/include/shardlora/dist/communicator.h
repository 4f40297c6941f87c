// Collectives over the ranks of a job, in the spirit of c10d's ProcessGroup.
//
// Contract (what NCCL and MPI require, stated once here):
//  - Every rank calls the same collectives in the same order, with tensors of the same dtype
//    and size (allgather and reduce_scatter: the same per-rank chunk). A rank that skips one
//    or reorders them stalls the job until the timeout fires.
//  - Tensors are contiguous: CPU tensors for the MPI backend, CUDA tensors on this rank's
//    device for NCCL. NCCL runs on the communicator's own stream: it waits for the work
//    queued so far on the current (default) stream, and wait() makes the default stream wait
//    for the collective, so callers never synchronize by hand.
//  - An *_async call returns a Work; the tensors belong to the collective until wait().
//    Works complete in issue order.
//  - Every collective finishes within timeout() or wait() throws TimeoutError naming it. A
//    timed-out job cannot continue (a collective may be half done): the caller exits, which
//    under mpirun or shardlora launch takes the other ranks down too.
//  - Byte counters: per kind, the message size S of each call as nccl-tests defines it
//    (all-reduce and broadcast: the tensor; all-gather: the gathered output; reduce-scatter:
//    the input), so tests and logs can check what crossed the network.
#pragma once

#include <torch/torch.h>

#include <array>
#include <functional>
#include <memory>
#include <string>

#include "shardlora/dist/store.h"

namespace shardlora::dist {

enum class ReduceOp { Sum, Max };

enum class Collective { AllReduce, AllGather, ReduceScatter, Broadcast, Barrier };
inline constexpr size_t kCollectiveKinds = 5;
const char* collective_name(Collective kind);  // "allreduce", ...

struct Traffic {
  std::array<int64_t, kCollectiveKinds> bytes{}, calls{};
  int64_t bytes_of(Collective kind) const { return bytes[static_cast<size_t>(kind)]; }
  int64_t calls_of(Collective kind) const { return calls[static_cast<size_t>(kind)]; }
};

class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual std::string backend_name() const = 0;

  // In place: every rank ends with the reduction of all ranks' tensors.
  virtual std::unique_ptr<Work> allreduce_async(torch::Tensor tensor, ReduceOp op) = 0;
  // output (numel = world_size * input numel) = the ranks' inputs concatenated in rank order.
  virtual std::unique_ptr<Work> allgather_async(torch::Tensor input, torch::Tensor output) = 0;
  // output (numel = input numel / world_size) = this rank's chunk of the reduced input.
  virtual std::unique_ptr<Work> reduce_scatter_async(torch::Tensor input, torch::Tensor output, ReduceOp op) = 0;
  virtual std::unique_ptr<Work> broadcast_async(torch::Tensor tensor, int root) = 0;
  virtual void barrier() = 0;

  void allreduce(torch::Tensor tensor, ReduceOp op = ReduceOp::Sum) { allreduce_async(std::move(tensor), op)->wait(); }
  void allgather(torch::Tensor input, torch::Tensor output) { allgather_async(std::move(input), std::move(output))->wait(); }
  void reduce_scatter(torch::Tensor input, torch::Tensor output, ReduceOp op = ReduceOp::Sum) {
    reduce_scatter_async(std::move(input), std::move(output), op)->wait();
  }
  void broadcast(torch::Tensor tensor, int root) { broadcast_async(std::move(tensor), root)->wait(); }

  Milliseconds timeout() const { return timeout_; }
  // Model loading may take longer than a collective should: callers widen the timeout
  // around it and narrow it again for training.
  void set_timeout(Milliseconds timeout) { timeout_ = timeout; }
  const Traffic& traffic() const { return traffic_; }

 protected:
  // Counts one call of `kind` moving a message of `bytes`; returns its sequence number.
  int64_t account(Collective kind, int64_t bytes);
  // Checks shared by the backends: the input splits evenly over the ranks and output holds
  // one chunk; the root is a rank. Error naming the collective otherwise.
  void check_reduce_scatter(const torch::Tensor& input, const torch::Tensor& output) const;
  void check_root(int root) const;

  Milliseconds timeout_{300000};
  Traffic traffic_;
};

// Checks shared by the backends: both tensors contiguous, of one dtype, and `output` holding
// `expected_output_numel` elements; Error naming the collective otherwise.
void check_collective_shapes(Collective kind, const torch::Tensor& input, const torch::Tensor& output,
                             int64_t expected_output_numel);

// Polls `done` until it returns true, backing off from spinning to short sleeps; throws
// TimeoutError("<what> did not complete within N s ...") once `timeout` has passed.
void poll_until_done(const std::function<bool()>& done, Milliseconds timeout, const std::string& what);

}  // namespace shardlora::dist
