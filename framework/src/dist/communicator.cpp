#include "shardlora/dist/communicator.h"

#include <sched.h>

#include <thread>

namespace shardlora::dist {

const char* collective_name(Collective kind) {
  switch (kind) {
    case Collective::AllReduce: return "allreduce";
    case Collective::AllGather: return "allgather";
    case Collective::ReduceScatter: return "reduce_scatter";
    case Collective::Broadcast: return "broadcast";
    case Collective::Barrier: return "barrier";
  }
  return "collective";
}

int64_t Communicator::account(Collective kind, int64_t bytes) {
  const auto index = static_cast<size_t>(kind);
  traffic_.bytes[index] += bytes;
  return ++traffic_.calls[index];
}

void Communicator::check_reduce_scatter(const torch::Tensor& input, const torch::Tensor& output) const {
  SHARDLORA_CHECK(input.numel() % world_size() == 0, "reduce_scatter: input of ", input.numel(),
                  " elements does not split evenly over ", world_size(), " ranks");
  check_collective_shapes(Collective::ReduceScatter, input, output, input.numel() / world_size());
}

void Communicator::check_root(int root) const {
  SHARDLORA_CHECK(root >= 0 && root < world_size(), "broadcast: root ", root, " is not a rank of ", world_size());
}

void check_collective_shapes(Collective kind, const torch::Tensor& input, const torch::Tensor& output,
                             int64_t expected_output_numel) {
  const char* name = collective_name(kind);
  SHARDLORA_CHECK(input.is_contiguous() && output.is_contiguous(), name, ": tensors must be contiguous");
  SHARDLORA_CHECK(input.scalar_type() == output.scalar_type(), name, ": input is ", input.scalar_type(), " but output is ",
                  output.scalar_type());
  SHARDLORA_CHECK(input.device() == output.device(), name, ": input and output are on different devices");
  SHARDLORA_CHECK(output.numel() == expected_output_numel, name, ": output has ", output.numel(), " elements, expected ",
                  expected_output_numel, " (input ", input.numel(), ")");
}

void poll_until_done(const std::function<bool()>& done, Milliseconds timeout, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (int64_t polls = 0; !done(); ++polls) {
    // Spin briefly (collectives of small buckets finish in microseconds), then yield the
    // core: ranks are often oversubscribed on CPU.
    if (polls < 200) continue;
    if (polls < 2000) {
      sched_yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      throw TimeoutError(detail::concat(what, " did not complete within ", static_cast<double>(timeout.count()) / 1000.0,
                                        " s: a rank is hung, stopped or gone (distributed.timeout_s)"));
    }
  }
}

}  // namespace shardlora::dist
