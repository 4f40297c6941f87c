#include "shardlora/dist/nccl_communicator.h"

#ifdef SHARDLORA_WITH_NCCL
#include <nccl.h>

#include <cstring>

#include "shardlora/kernels/device.h"
#endif

namespace shardlora::dist {

#ifndef SHARDLORA_WITH_NCCL

namespace {
[[noreturn]] void no_nccl() {
  throw Error("distributed.backend nccl: this shardlora build has no NCCL (rebuild with CUDA and NCCL)");
}
}  // namespace

bool nccl_available() { return false; }
std::string nccl_unique_id() { no_nccl(); }
std::unique_ptr<Communicator> make_nccl_communicator(int, int, int, const std::string&, Milliseconds) { no_nccl(); }

#else

namespace {

void check_nccl(ncclResult_t result, const char* call) {
  if (result == ncclSuccess || result == ncclInProgress) return;
  throw Error(std::string(call) + " failed: " + ncclGetErrorString(result) + " (" + ncclGetLastError(nullptr) + ")");
}

ncclDataType_t nccl_type(const torch::Tensor& tensor, const char* what) {
  switch (tensor.scalar_type()) {
    case torch::kFloat32: return ncclFloat32;
    case torch::kFloat64: return ncclFloat64;
    case torch::kFloat16: return ncclFloat16;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kInt32: return ncclInt32;
    case torch::kInt64: return ncclInt64;
    case torch::kUInt8: return ncclUint8;
    case torch::kInt8: return ncclInt8;
    default: throw Error(detail::concat(what, " on the NCCL backend: unsupported dtype ", tensor.scalar_type()));
  }
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::Max ? ncclMax : ncclSum; }

class NcclCommunicator;

// One collective: its completion event on the communicator stream, polled with a deadline.
class NcclWork : public Work {
 public:
  NcclWork(NcclCommunicator& owner, std::string what, std::vector<torch::Tensor> tensors)
      : owner_(owner), what_(std::move(what)), tensors_(std::move(tensors)), done_(kernels::cuda_event_create()) {}
  ~NcclWork() override { kernels::cuda_event_destroy(done_); }
  void wait() override;
  kernels::Event done() const { return done_; }

 private:
  NcclCommunicator& owner_;
  std::string what_;
  std::vector<torch::Tensor> tensors_;
  kernels::Event done_;
};

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(int rank, int world_size, int device, const std::string& unique_id, Milliseconds init_timeout)
      : rank_(rank), world_size_(world_size), device_(device) {
    SHARDLORA_CHECK(unique_id.size() == sizeof(ncclUniqueId), "NCCL unique id of ", unique_id.size(), " bytes, expected ",
                    sizeof(ncclUniqueId));
    ncclUniqueId id;
    std::memcpy(&id, unique_id.data(), sizeof id);
    kernels::cuda_set_device(device);
    stream_ = kernels::cuda_stream_create();
    ready_ = kernels::cuda_event_create();
    try {
      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.blocking = 0;  // init and collectives return at once; completion is polled with a deadline
      check_nccl(ncclCommInitRankConfig(&comm_, world_size, id, rank, &config), "ncclCommInitRankConfig");
      settle(init_timeout, "NCCL communicator initialization");
    } catch (...) {
      release();  // no destructor runs for a constructor that throws
      throw;
    }
  }

  ~NcclCommunicator() override { release(); }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string backend_name() const override { return "nccl"; }

  std::unique_ptr<Work> allreduce_async(torch::Tensor tensor, ReduceOp op) override {
    check_device(tensor, "allreduce");
    return start(Collective::AllReduce, tensor.nbytes(), {tensor}, [&] {
      return ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), nccl_type(tensor, "allreduce"), nccl_op(op),
                           comm_, stream());
    });
  }

  std::unique_ptr<Work> allgather_async(torch::Tensor input, torch::Tensor output) override {
    check_device(input, "allgather");
    check_collective_shapes(Collective::AllGather, input, output, input.numel() * world_size_);
    return start(Collective::AllGather, output.nbytes(), {input, output}, [&] {
      return ncclAllGather(input.data_ptr(), output.data_ptr(), input.nbytes(), ncclUint8, comm_, stream());
    });
  }

  std::unique_ptr<Work> reduce_scatter_async(torch::Tensor input, torch::Tensor output, ReduceOp op) override {
    check_device(input, "reduce_scatter");
    check_reduce_scatter(input, output);
    return start(Collective::ReduceScatter, input.nbytes(), {input, output}, [&] {
      return ncclReduceScatter(input.data_ptr(), output.data_ptr(), output.numel(), nccl_type(input, "reduce_scatter"),
                               nccl_op(op), comm_, stream());
    });
  }

  std::unique_ptr<Work> broadcast_async(torch::Tensor tensor, int root) override {
    check_device(tensor, "broadcast");
    check_root(root);
    return start(Collective::Broadcast, tensor.nbytes(), {tensor}, [&] {
      return ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.nbytes(), ncclUint8, root, comm_, stream());
    });
  }

  // NCCL has no barrier: an all-reduce of one value is one.
  void barrier() override {
    auto token = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA, device_));
    allreduce_async(token, ReduceOp::Sum)->wait();
  }

  // Waits for `done` (or for the communicator's pending init) with a deadline; on timeout or
  // an asynchronous NCCL error, aborts the communicator so no kernel stays blocked.
  void wait_for(kernels::Event done, Milliseconds timeout, const std::string& what) {
    try {
      poll_until_done(
          [&] {
            ncclResult_t state = ncclSuccess;
            check_nccl(ncclCommGetAsyncError(comm_, &state), "ncclCommGetAsyncError");
            if (state != ncclSuccess && state != ncclInProgress) check_nccl(state, what.c_str());
            return state == ncclSuccess && (done == nullptr || kernels::cuda_event_query(done));
          },
          timeout, what);
    } catch (const Error&) {
      abort_communicator();
      throw;
    }
  }

  void settle(Milliseconds timeout, const std::string& what) { wait_for(nullptr, timeout, what); }

 private:
  cudaStream_t stream() const { return static_cast<cudaStream_t>(stream_); }

  void check_device(const torch::Tensor& tensor, const char* what) const {
    SHARDLORA_CHECK(tensor.is_cuda() && tensor.device().index() == device_, what, " on the NCCL backend needs tensors on cuda:",
                    device_, ", got ", tensor.device());
    SHARDLORA_CHECK(tensor.is_contiguous(), what, ": tensors must be contiguous");
  }

  template <typename Issue>
  std::unique_ptr<Work> start(Collective kind, int64_t bytes, std::vector<torch::Tensor> tensors, Issue issue) {
    SHARDLORA_CHECK(!aborted_, collective_name(kind), ": the NCCL communicator was aborted after an earlier failure");
    const int64_t sequence = account(kind, bytes);
    auto work = std::make_unique<NcclWork>(*this, detail::concat(collective_name(kind), " #", sequence, " (", bytes, " bytes)"),
                                           std::move(tensors));
    // After everything queued so far on the default stream (which produced the inputs).
    kernels::cuda_event_record(ready_, nullptr);
    kernels::cuda_stream_wait_event(stream_, ready_);
    check_nccl(issue(), collective_name(kind));
    settle(timeout(), collective_name(kind));  // a non-blocking comm may still be enqueuing
    kernels::cuda_event_record(work->done(), stream_);
    return work;
  }

  void release() {
    if (comm_) ncclCommDestroy(comm_);  // finalizes it first
    comm_ = nullptr;
    if (ready_) kernels::cuda_event_destroy(ready_);
    if (stream_) kernels::cuda_stream_destroy(stream_);
  }

  void abort_communicator() {
    if (aborted_) return;
    aborted_ = true;
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }

  int rank_, world_size_, device_;
  ncclComm_t comm_ = nullptr;
  kernels::Stream stream_ = nullptr;
  kernels::Event ready_ = nullptr;
  bool aborted_ = false;
};

void NcclWork::wait() {
  owner_.wait_for(done_, owner_.timeout(), what_);
  // Later work on the default stream reads the results.
  kernels::cuda_stream_wait_event(nullptr, done_);
  tensors_.clear();
}

}  // namespace

bool nccl_available() { return true; }

std::string nccl_unique_id() {
  ncclUniqueId id;
  check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  return std::string(reinterpret_cast<const char*>(&id), sizeof id);
}

std::unique_ptr<Communicator> make_nccl_communicator(int rank, int world_size, int device, const std::string& unique_id,
                                                     Milliseconds init_timeout) {
  return std::make_unique<NcclCommunicator>(rank, world_size, device, unique_id, init_timeout);
}

#endif

}  // namespace shardlora::dist
