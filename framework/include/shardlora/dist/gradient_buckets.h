// Adapter gradients summed over ranks in flat buckets of at most distributed.bucket_mb,
// overlapped with backward (DDP's reducer, for the few parameters LoRA trains).
//
// Parameters are bucketed in reverse registration order, the order backward finishes them.
// Only the last micro-batch of an optimizer step communicates (earlier ones accumulate
// locally): arm() before its backward makes each parameter's gradient hook copy the
// accumulated gradient into its bucket; a bucket is launched (all-reduce, sum) when its last
// gradient arrives, and buckets are launched strictly in index order so every rank issues the
// same collectives in the same order. finish() launches what backward did not reach, waits,
// and writes the sums back into .grad.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "shardlora/dist/communicator.h"

namespace shardlora::dist {

class GradientBuckets {
 public:
  GradientBuckets(std::vector<torch::Tensor> parameters, int64_t bucket_bytes, Communicator& comm);
  ~GradientBuckets();
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;

  void arm();
  void finish();

  size_t bucket_count() const { return buckets_.size(); }
  int64_t bytes_per_step() const { return bytes_per_step_; }  // what one step all-reduces
  int64_t bytes_reduced() const { return bytes_reduced_; }    // so far

 private:
  struct Bucket {
    torch::Tensor flat;                // fp32, the bucket's gradients back to back
    std::vector<size_t> members;       // parameter indices
    size_t waiting = 0;                // gradients still to arrive this step
    std::unique_ptr<Work> work;
  };
  void on_gradient(size_t index, const torch::Tensor& grad);
  void launch_ready();

  std::vector<torch::Tensor> parameters_;
  std::vector<size_t> bucket_of_;
  std::vector<int64_t> offset_of_;  // within its bucket, in elements
  std::vector<unsigned> hooks_;
  std::vector<Bucket> buckets_;
  std::vector<bool> arrived_;
  size_t next_launch_ = 0;
  bool armed_ = false;
  int64_t bytes_per_step_ = 0, bytes_reduced_ = 0;
  Communicator& comm_;
};

}  // namespace shardlora::dist
