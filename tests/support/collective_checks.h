// Checks every communicator backend must pass, shared by the MPI tests (ranks are
// processes under mpirun) and the TCP ring tests (ranks are threads): each collective
// against a float64 or exact reference built from all ranks' inputs, which every rank can
// regenerate from their seeds. `device` is where the communicator wants its tensors (CUDA
// for NCCL); references stay on the CPU.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "shardlora/dist/communicator.h"

namespace shardlora::testing {

// Rank r's input for a check: the same on every rank that asks.
inline torch::Tensor input_of(int rank, int64_t numel, torch::ScalarType dtype, int salt) {
  torch::Generator generator = at::detail::createCPUGenerator(static_cast<uint64_t>(1000 * salt + rank));
  return torch::randn({numel}, generator, torch::kFloat64).mul(10).to(dtype);
}

inline void check_allreduce_sum_and_max(dist::Communicator& comm, torch::Device device = torch::kCPU) {
  const int world = comm.world_size(), me = comm.rank();
  for (int64_t numel : {1, 7, 4099}) {
    torch::Tensor reference_sum = torch::zeros({numel}, torch::kFloat64), reference_max;
    for (int r = 0; r < world; ++r) {
      const auto x = input_of(r, numel, torch::kFloat32, 1).to(torch::kFloat64);
      reference_sum += x;
      reference_max = r == 0 ? x : torch::maximum(reference_max, x);
    }
    auto sum = input_of(me, numel, torch::kFloat32, 1).to(device);
    comm.allreduce(sum, dist::ReduceOp::Sum);
    EXPECT_TRUE(torch::allclose(sum.cpu().to(torch::kFloat64), reference_sum, 1e-6, 1e-5)) << "numel " << numel;
    auto max = input_of(me, numel, torch::kFloat32, 1).to(device);
    comm.allreduce(max, dist::ReduceOp::Max);
    EXPECT_TRUE(torch::equal(max.cpu().to(torch::kFloat64), reference_max)) << "max is exact";
    auto sum64 = input_of(me, numel, torch::kInt64, 2).to(device);
    torch::Tensor reference64 = torch::zeros({numel}, torch::kInt64);
    for (int r = 0; r < world; ++r) reference64 += input_of(r, numel, torch::kInt64, 2);
    comm.allreduce(sum64);
    EXPECT_TRUE(torch::equal(sum64.cpu(), reference64)) << "integer sums are exact";
  }
}

inline void check_allgather_bit_exact(dist::Communicator& comm, torch::Device device = torch::kCPU) {
  const int world = comm.world_size(), me = comm.rank();
  for (auto dtype : {torch::kUInt8, torch::kBFloat16, torch::kFloat32}) {
    const auto mine = input_of(me, 333, dtype, 3).to(device);
    auto gathered = torch::empty({333 * world}, mine.options());
    comm.allgather(mine, gathered);
    gathered = gathered.cpu();
    for (int r = 0; r < world; ++r) {
      EXPECT_TRUE(torch::equal(gathered.slice(0, 333 * r, 333 * (r + 1)), input_of(r, 333, dtype, 3))) << "rank " << r << " " << dtype;
    }
  }
}

inline void check_reduce_scatter(dist::Communicator& comm, torch::Device device = torch::kCPU) {
  const int world = comm.world_size(), me = comm.rank();
  const int64_t chunk = 129;
  torch::Tensor reference = torch::zeros({chunk * world}, torch::kFloat64);
  for (int r = 0; r < world; ++r) reference += input_of(r, chunk * world, torch::kFloat32, 4).to(torch::kFloat64);
  auto output = torch::empty({chunk}, torch::TensorOptions(torch::kFloat32).device(device));
  comm.reduce_scatter(input_of(me, chunk * world, torch::kFloat32, 4).to(device), output);
  EXPECT_TRUE(torch::allclose(output.cpu().to(torch::kFloat64), reference.slice(0, chunk * me, chunk * (me + 1)), 1e-6, 1e-5));
}

inline void check_broadcast_from_every_root(dist::Communicator& comm, int64_t numel = 1000,
                                            torch::Device device = torch::kCPU) {
  const int world = comm.world_size(), me = comm.rank();
  for (int root = 0; root < world; ++root) {
    auto tensor = input_of(me, numel, torch::kBFloat16, 5).to(device);
    comm.broadcast(tensor, root);
    EXPECT_TRUE(torch::equal(tensor.cpu(), input_of(root, numel, torch::kBFloat16, 5))) << "root " << root;
  }
  comm.barrier();
}

}  // namespace shardlora::testing
