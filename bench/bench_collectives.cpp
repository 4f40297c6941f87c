// Bus bandwidth of the communicator's collectives across message sizes, as nccl-tests
// reports it (doc/PERFORMANCE.md): algBW = S / t, busBW = algBW * 2(N-1)/N for all-reduce
// and * (N-1)/N for all-gather and reduce-scatter, t the slowest rank's mean time.
// Every size is validated once outside the timed loop (exact integer-valued sums); a wrong
// result exits 1. Ranks come from the launcher, the backend from --backend (as
// distributed.backend; nccl puts rank r on GPU local_rank):
//
//   mpirun -np 2 bench_collectives [--backend mpi] [--min-bytes 1024] [--max-bytes 67108864] [--seconds 0.3]
//   shardlora launch --nproc-per-node 2 -- bench_collectives --backend tcp
//   bench_collectives --backend nccl     # one rank on GPU 0 (busBW is 0 by definition)
//
// A build without the framework (a GPU box with only CUDA and libtorch) has nccl alone.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "shardlora/dist/nccl_communicator.h"
#ifdef SHARDLORA_BENCH_JOB
#include "shardlora/cluster/job.h"
#endif

using namespace shardlora;

namespace {

struct Args {
  std::string backend = "auto";
  int64_t min_bytes = 1 << 10, max_bytes = 64 << 20;
  double seconds = 0.3;  // target time per size
};

Args parse(int argc, char** argv) {
  Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--backend")) args.backend = argv[i + 1];
    else if (!std::strcmp(argv[i], "--min-bytes")) args.min_bytes = std::atoll(argv[i + 1]);
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

Buffers make_buffers(Kind kind, int64_t bytes, int world, int rank, torch::Device device) {
  const int64_t numel = bytes / 4 / world * world;  // divisible for reduce-scatter
  // Small integers: float sums are exact, so validation can demand equality.
  auto pattern = torch::arange(numel, torch::kInt64).remainder(13).add(rank).to(torch::kFloat32).to(device);
  const auto options = pattern.options();
  switch (kind) {
    case Kind::AllReduce: return {pattern, pattern};
    case Kind::AllGather: return {pattern.slice(0, 0, numel / world).clone(), torch::empty({numel}, options)};
    case Kind::ReduceScatter: return {pattern, torch::empty({numel / world}, options)};
  }
  return {};
}

// A communicator and where it wants its tensors (this rank's GPU for nccl).
struct Ranks {
  dist::Communicator& comm;
  torch::Device device;
};

// The largest of the ranks' values, through the communicator itself.
double max_over_ranks(Ranks& ranks, double value) {
  auto tensor = torch::full({1}, value, torch::TensorOptions(torch::kFloat64).device(ranks.device));
  ranks.comm.allreduce(tensor, dist::ReduceOp::Max);
  return tensor.item<double>();
}

void run_once(dist::Communicator& comm, Kind kind, Buffers& b) {
  switch (kind) {
    case Kind::AllReduce: comm.allreduce(b.input); break;
    case Kind::AllGather: comm.allgather(b.input, b.output); break;
    case Kind::ReduceScatter: comm.reduce_scatter(b.input, b.output); break;
  }
}

bool validate(Ranks& ranks, Kind kind, int64_t bytes) {
  dist::Communicator& comm = ranks.comm;
  const int world = comm.world_size(), rank = comm.rank();
  Buffers b = make_buffers(kind, bytes, world, rank, ranks.device);
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
  return max_over_ranks(ranks, torch::equal(got.cpu(), expected) ? 0 : 1) == 0;
}

// Mean seconds per call on the slowest rank.
double time_collective(Ranks& ranks, Kind kind, int64_t bytes, double target_seconds) {
  dist::Communicator& comm = ranks.comm;
  Buffers b = make_buffers(kind, bytes, comm.world_size(), comm.rank(), ranks.device);
  for (int i = 0; i < 3; ++i) run_once(comm, kind, b);  // warm-up
  // Iterations from a probe, agreed by every rank so they all run the same count.
  comm.barrier();
  auto start = std::chrono::steady_clock::now();
  run_once(comm, kind, b);
  const double slowest_probe =
      max_over_ranks(ranks, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  const int iterations = std::max(5, std::min(10000, static_cast<int>(target_seconds / std::max(slowest_probe, 1e-7))));
  comm.barrier();
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < iterations; ++i) run_once(comm, kind, b);
  return max_over_ranks(ranks, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / iterations);
}

// One rank on GPU 0: what a single lent GPU can measure.
std::unique_ptr<dist::Communicator> one_gpu_rank() {
  return dist::make_nccl_communicator(0, 1, 0, dist::nccl_unique_id(), dist::Milliseconds(60000));
}

}  // namespace

int main(int argc, char** argv) try {
  const Args args = parse(argc, argv);
#ifdef SHARDLORA_BENCH_JOB
  const bool nccl = args.backend == "nccl";
  const cluster::LaunchEnv launch = cluster::detect_launch_env();
  const torch::Device device = cluster::rank_device(nccl ? "cuda" : "cpu", launch);
  auto job = cluster::Job::join({.backend = args.backend, .device = device}, launch);
  std::unique_ptr<dist::Communicator> single = !job->distributed() && nccl ? one_gpu_rank() : nullptr;
  dist::Communicator* comm_pointer = single ? single.get() : job->communicator();
  if (!comm_pointer) {
    std::fprintf(stderr, "bench_collectives: one rank: start it under mpirun or shardlora launch, or use --backend nccl\n");
    return 2;
  }
  Ranks ranks{*comm_pointer, device};
#else
  if (args.backend != "nccl" && args.backend != "auto") {
    std::fprintf(stderr, "bench_collectives: this build has only the nccl backend\n");
    return 2;
  }
  auto single = one_gpu_rank();
  Ranks ranks{*single, torch::Device(torch::kCUDA, 0)};
#endif
  dist::Communicator& comm = ranks.comm;
  const int world = comm.world_size(), rank = comm.rank();
  if (rank == 0) {
    std::printf("# bench_collectives: %s backend, %d ranks, float32; busBW = algBW x 2(N-1)/N (allreduce), x (N-1)/N (others)\n",
                comm.backend_name().c_str(), world);
    std::printf("%-15s %12s %10s %10s %10s\n", "collective", "size(B)", "time(us)", "algBW", "busBW(GB/s)");
  }
  bool all_valid = true;
  for (Kind kind : {Kind::AllReduce, Kind::AllGather, Kind::ReduceScatter}) {
    for (int64_t bytes = args.min_bytes; bytes <= args.max_bytes; bytes *= 4) {
      if (!validate(ranks, kind, bytes)) {
        all_valid = false;
        if (rank == 0) std::printf("%-15s %12lld  WRONG RESULT\n", kind_name(kind), static_cast<long long>(bytes));
        continue;
      }
      const double seconds = time_collective(ranks, kind, bytes, args.seconds);
      const double algbw = static_cast<double>(bytes) / seconds / 1e9;
      if (rank == 0) {
        std::printf("%-15s %12lld %10.1f %10.3f %10.3f\n", kind_name(kind), static_cast<long long>(bytes), seconds * 1e6, algbw,
                    algbw * bus_factor(kind, world));
      }
    }
  }
  if (rank == 0) std::printf("# validation: %s\n", all_valid ? "all sizes correct" : "FAILED");
  return all_valid ? 0 : 1;
} catch (const std::exception& error) {
  std::fprintf(stderr, "bench_collectives: %s\n", error.what());
  return 1;
}
