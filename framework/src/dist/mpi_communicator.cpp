#include "shardlora/dist/mpi_communicator.h"

#include <mpi.h>

#include <climits>
#include <cstdlib>

namespace shardlora::dist {
namespace {

MPI_Comm as_comm(void* comm) { return *static_cast<MPI_Comm*>(comm); }

void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw Error(std::string(call) + " failed: " + std::string(text, static_cast<size_t>(length)));
}

MPI_Datatype reduction_type(const torch::Tensor& tensor, const char* what) {
  switch (tensor.scalar_type()) {
    case torch::kFloat32: return MPI_FLOAT;
    case torch::kFloat64: return MPI_DOUBLE;
    case torch::kInt32: return MPI_INT32_T;
    case torch::kInt64: return MPI_INT64_T;
    default:
      throw Error(detail::concat(what, " on the MPI backend takes float32, float64, int32 or int64 tensors, not ",
                                 tensor.scalar_type()));
  }
}

MPI_Op as_op(ReduceOp op) { return op == ReduceOp::Max ? MPI_MAX : MPI_SUM; }

// MPI counts are int: a larger message is refused rather than silently truncated.
int as_count(int64_t count, const char* what) {
  SHARDLORA_CHECK(count <= INT_MAX, what, ": ", count, " elements exceed the MPI count limit (", INT_MAX, ")");
  return static_cast<int>(count);
}

void check_cpu(const torch::Tensor& tensor, const char* what) {
  SHARDLORA_CHECK(tensor.device().is_cpu(), what, " on the MPI backend needs CPU tensors, got ", tensor.device());
  SHARDLORA_CHECK(tensor.is_contiguous(), what, ": tensors must be contiguous");
}

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

void ensure_mpi_initialized() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return;
  int provided = 0;
  check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
  SHARDLORA_CHECK(provided >= MPI_THREAD_SERIALIZED, "this MPI library provides thread level ", provided,
                  ", below MPI_THREAD_SERIALIZED");
  std::atexit(finalize_at_exit);
}

void mpi_abort(int exit_code) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

// One non-blocking MPI collective: keeps its tensors alive and polls under the mutex.
class MpiCommunicator::MpiWork : public Work {
 public:
  MpiWork(MpiCommunicator& owner, std::string what, std::vector<torch::Tensor> tensors)
      : owner_(owner), what_(std::move(what)), tensors_(std::move(tensors)) {}
  MPI_Request request = MPI_REQUEST_NULL;

  void wait() override {
    poll_until_done(
        [this] {
          std::lock_guard<std::mutex> lock(owner_.mutex_);
          int done = 0;
          check_mpi(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
          return done != 0;
        },
        owner_.timeout(), what_);
    tensors_.clear();
  }

 private:
  MpiCommunicator& owner_;
  std::string what_;
  std::vector<torch::Tensor> tensors_;
};

MpiCommunicator::MpiCommunicator() {
  ensure_mpi_initialized();
  auto* comm = new MPI_Comm;
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, comm), "MPI_Comm_dup");
  // Errors come back as codes and become exceptions naming the call.
  MPI_Comm_set_errhandler(*comm, MPI_ERRORS_RETURN);
  comm_ = comm;
  MPI_Comm_rank(*comm, &rank_);
  MPI_Comm_size(*comm, &world_size_);
}

MpiCommunicator::~MpiCommunicator() {
  auto* comm = static_cast<MPI_Comm*>(comm_);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Comm_free(comm);
  delete comm;
}

std::unique_ptr<Work> MpiCommunicator::start(Collective kind, int64_t bytes, std::vector<torch::Tensor> tensors,
                                             const char* call, const std::function<int(void*)>& issue) {
  const int64_t sequence = account(kind, bytes);
  auto work = std::make_unique<MpiWork>(
      *this, detail::concat(collective_name(kind), " #", sequence, " (", bytes, " bytes)"), std::move(tensors));
  std::lock_guard<std::mutex> lock(mutex_);
  check_mpi(issue(&work->request), call);
  return work;
}

std::unique_ptr<Work> MpiCommunicator::allreduce_async(torch::Tensor tensor, ReduceOp op) {
  check_cpu(tensor, "allreduce");
  const MPI_Datatype type = reduction_type(tensor, "allreduce");
  const int count = as_count(tensor.numel(), "allreduce");
  return start(Collective::AllReduce, tensor.nbytes(), {tensor}, "MPI_Iallreduce", [&](void* request) {
    return MPI_Iallreduce(MPI_IN_PLACE, tensor.data_ptr(), count, type, as_op(op), as_comm(comm_), static_cast<MPI_Request*>(request));
  });
}

std::unique_ptr<Work> MpiCommunicator::allgather_async(torch::Tensor input, torch::Tensor output) {
  check_cpu(input, "allgather");
  check_cpu(output, "allgather");
  check_collective_shapes(Collective::AllGather, input, output, input.numel() * world_size_);
  const int bytes = as_count(static_cast<int64_t>(input.nbytes()), "allgather");
  return start(Collective::AllGather, output.nbytes(), {input, output}, "MPI_Iallgather", [&](void* request) {
    return MPI_Iallgather(input.data_ptr(), bytes, MPI_BYTE, output.data_ptr(), bytes, MPI_BYTE, as_comm(comm_),
                          static_cast<MPI_Request*>(request));
  });
}

std::unique_ptr<Work> MpiCommunicator::reduce_scatter_async(torch::Tensor input, torch::Tensor output, ReduceOp op) {
  check_cpu(input, "reduce_scatter");
  check_cpu(output, "reduce_scatter");
  check_reduce_scatter(input, output);
  const MPI_Datatype type = reduction_type(input, "reduce_scatter");
  const int count = as_count(output.numel(), "reduce_scatter");
  return start(Collective::ReduceScatter, input.nbytes(), {input, output}, "MPI_Ireduce_scatter_block", [&](void* request) {
    return MPI_Ireduce_scatter_block(input.data_ptr(), output.data_ptr(), count, type, as_op(op), as_comm(comm_),
                                     static_cast<MPI_Request*>(request));
  });
}

std::unique_ptr<Work> MpiCommunicator::broadcast_async(torch::Tensor tensor, int root) {
  check_cpu(tensor, "broadcast");
  check_root(root);
  const int bytes = as_count(static_cast<int64_t>(tensor.nbytes()), "broadcast");
  return start(Collective::Broadcast, tensor.nbytes(), {tensor}, "MPI_Ibcast", [&](void* request) {
    return MPI_Ibcast(tensor.data_ptr(), bytes, MPI_BYTE, root, as_comm(comm_), static_cast<MPI_Request*>(request));
  });
}

void MpiCommunicator::barrier() {
  start(Collective::Barrier, 0, {}, "MPI_Ibarrier", [&](void* request) {
    return MPI_Ibarrier(as_comm(comm_), static_cast<MPI_Request*>(request));
  })->wait();
}

}  // namespace shardlora::dist
