// Bus bandwidth of the communicator's collectives across message sizes, as nccl-tests
// reports it (doc/PERFORMANCE.md): algBW = S / t, busBW = algBW * 2(N-1)/N for all-reduce
// and * (N-1)/N for all-gather and reduce-scatter, t the slowest rank's mean time.
// Every size is validated once outside the timed loop (exact integer-valued sums); a wrong
// result exits 1. Run under mpirun:
//
//   mpirun -np 2 bench_collectives [--min-bytes 1024] [--max-bytes 67108864] [--seconds 0.3]
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "shardlora/dist/mpi_communicator.h"

using namespace shardlora;

namespace {

struct Args {
  int64_t min_bytes = 1 << 10, max_bytes = 64 << 20;
  double seconds = 0.3;  // target time per size
};

Args parse(int argc, char** argv) {
  Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--min-bytes")) args.min_bytes = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--max-bytes")) args.max_bytes = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--seconds")) args.seconds = std::atof(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      std::exit(2);
    }
  }
  return args;
}

enum class Kind { AllReduce, AllGather, ReduceScatter };

const char* kind_name(Kind kind) {
  return kind == Kind::AllReduce ? "allreduce" : kind == Kind::AllGather ? "allgather" : "reduce_scatter";
}

// busBW / algBW, nccl-tests' factors.
double bus_factor(Kind kind, int world) {
  const double n = world;
  return kind == Kind::AllReduce ? 2 * (n - 1) / n : (n - 1) / n;
}

// S = the message size in bytes as nccl-tests counts it (all-gather: the output).
struct Buffers {
  torch::Tensor input, output;
};

Buffers make_buffers(Kind kind, int64_t bytes, int world, int rank) {
  const int64_t numel = bytes / 4 / world * world;  // divisible for reduce-scatter
  // Small integers: float sums are exact, so validation can demand equality.
  auto pattern = torch::arange(numel, torch::kInt64).remainder(13).add(rank).to(torch::kFloat32);
  switch (kind) {
    case Kind::AllReduce: return {pattern, pattern};
    case Kind::AllGather: return {pattern.slice(0, 0, numel / world).clone(), torch::empty({numel}, torch::kFloat32)};
    case Kind::ReduceScatter: return {pattern, torch::empty({numel / world}, torch::kFloat32)};
  }
  return {};
}

void run_once(dist::Communicator& comm, Kind kind, Buffers& b) {
  switch (kind) {
    case Kind::AllReduce: comm.allreduce(b.input); break;
    case Kind::AllGather: comm.allgather(b.input, b.output); break;
    case Kind::ReduceScatter: comm.reduce_scatter(b.input, b.output); break;
  }
}

bool validate(dist::Communicator& comm, Kind kind, int64_t bytes) {
  const int world = comm.world_size(), rank = comm.rank();
  Buffers b = make_buffers(kind, bytes, world, rank);
  const int64_t numel = kind == Kind::AllGather ? b.output.numel() : b.input.numel();
  run_once(comm, kind, b);
  const auto base = torch::arange(numel, torch::kInt64).remainder(13);
  torch::Tensor expected, got;
  if (kind == Kind::AllReduce) {
    expected = base.mul(world).add(world * (world - 1) / 2).to(torch::kFloat32);
    got = b.input;
  } else if (kind == Kind::AllGather) {
    const int64_t chunk = numel / world;
    expected = torch::cat([&] {
      std::vector<torch::Tensor> parts;
      for (int r = 0; r < world; ++r) parts.push_back(base.slice(0, 0, chunk).add(r).to(torch::kFloat32));
      return parts;
    }());
    got = b.output;
  } else {
    const int64_t chunk = numel / world;
    expected = base.slice(0, chunk * rank, chunk * (rank + 1)).mul(world).add(world * (world - 1) / 2).to(torch::kFloat32);
    got = b.output;
  }
  int ok = torch::equal(got, expected) ? 1 : 0, all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all_ok == 1;
}

// Mean seconds per call on the slowest rank.
double time_collective(dist::Communicator& comm, Kind kind, int64_t bytes, double target_seconds) {
  Buffers b = make_buffers(kind, bytes, comm.world_size(), comm.rank());
  for (int i = 0; i < 3; ++i) run_once(comm, kind, b);  // warm-up
  // Iterations from a probe, agreed by every rank so they all run the same count.
  comm.barrier();
  auto start = std::chrono::steady_clock::now();
  run_once(comm, kind, b);
  double probe = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), slowest_probe = 0;
  MPI_Allreduce(&probe, &slowest_probe, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  const int iterations = std::max(5, std::min(10000, static_cast<int>(target_seconds / std::max(slowest_probe, 1e-7))));
  comm.barrier();
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < iterations; ++i) run_once(comm, kind, b);
  double mean = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / iterations, slowest = 0;
  MPI_Allreduce(&mean, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return slowest;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  dist::MpiCommunicator comm;
  const int world = comm.world_size(), rank = comm.rank();
  if (rank == 0) {
    std::printf("# bench_collectives: MPI backend, %d ranks, float32; busBW = algBW x 2(N-1)/N (allreduce), x (N-1)/N (others)\n", world);
    std::printf("%-15s %12s %10s %10s %10s\n", "collective", "size(B)", "time(us)", "algBW", "busBW(GB/s)");
  }
  bool all_valid = true;
  for (Kind kind : {Kind::AllReduce, Kind::AllGather, Kind::ReduceScatter}) {
    for (int64_t bytes = args.min_bytes; bytes <= args.max_bytes; bytes *= 4) {
      if (!validate(comm, kind, bytes)) {
        all_valid = false;
        if (rank == 0) std::printf("%-15s %12lld  WRONG RESULT\n", kind_name(kind), static_cast<long long>(bytes));
        continue;
      }
      const double seconds = time_collective(comm, kind, bytes, args.seconds);
      const double algbw = static_cast<double>(bytes) / seconds / 1e9;
      if (rank == 0) {
        std::printf("%-15s %12lld %10.1f %10.3f %10.3f\n", kind_name(kind), static_cast<long long>(bytes), seconds * 1e6, algbw,
                    algbw * bus_factor(kind, world));
      }
    }
  }
  if (rank == 0) std::printf("# validation: %s\n", all_valid ? "all sizes correct" : "FAILED");
  return all_valid ? 0 : 1;
}
