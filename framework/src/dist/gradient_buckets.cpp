#include "shardlora/dist/gradient_buckets.h"

namespace shardlora::dist {

GradientBuckets::GradientBuckets(std::vector<torch::Tensor> parameters, int64_t bucket_bytes, Communicator& comm)
    : parameters_(std::move(parameters)), comm_(comm) {
  SHARDLORA_CHECK(bucket_bytes > 0, "gradient buckets: bucket size must be positive");
  const size_t count = parameters_.size();
  bucket_of_.resize(count);
  offset_of_.resize(count);
  arrived_.assign(count, false);
  std::vector<int64_t> bucket_elements;
  for (size_t k = 0; k < count; ++k) {
    const size_t index = count - 1 - k;  // backward finishes the last-registered first
    const torch::Tensor& parameter = parameters_[index];
    SHARDLORA_CHECK(parameter.scalar_type() == torch::kFloat32, "gradient buckets: parameter ", index, " is ",
                    parameter.scalar_type(), ", adapters are float32");
    const int64_t bytes = parameter.numel() * 4;
    if (buckets_.empty() || (bucket_elements.back() > 0 && (bucket_elements.back() * 4 + bytes) > bucket_bytes)) {
      buckets_.emplace_back();
      bucket_elements.push_back(0);
    }
    bucket_of_[index] = buckets_.size() - 1;
    offset_of_[index] = bucket_elements.back();
    bucket_elements.back() += parameter.numel();
    buckets_.back().members.push_back(index);
  }
  for (size_t b = 0; b < buckets_.size(); ++b) {
    buckets_[b].flat = torch::zeros({bucket_elements[b]}, parameters_.empty() ? torch::TensorOptions() : parameters_[0].options().requires_grad(false));
    bytes_per_step_ += bucket_elements[b] * 4;
  }
  for (size_t index = 0; index < count; ++index) {
    hooks_.push_back(parameters_[index].register_hook([this, index](const torch::Tensor& grad) {
      on_gradient(index, grad);
      return grad;
    }));
  }
}

GradientBuckets::~GradientBuckets() {
  for (size_t index = 0; index < hooks_.size(); ++index) parameters_[index].remove_hook(hooks_[index]);
}

void GradientBuckets::arm() {
  SHARDLORA_CHECK(!armed_, "gradient buckets: arm() twice without finish()");
  armed_ = true;
  next_launch_ = 0;
  std::fill(arrived_.begin(), arrived_.end(), false);
  for (auto& bucket : buckets_) bucket.waiting = bucket.members.size();
}

void GradientBuckets::on_gradient(size_t index, const torch::Tensor& grad) {
  if (!armed_ || arrived_[index]) return;
  arrived_[index] = true;
  Bucket& bucket = buckets_[bucket_of_[index]];
  const torch::Tensor& parameter = parameters_[index];
  torch::NoGradGuard no_grad;
  auto slot = bucket.flat.slice(0, offset_of_[index], offset_of_[index] + parameter.numel()).view_as(parameter);
  // The hook sees this micro-batch's gradient before it is added to .grad: add the earlier ones.
  if (parameter.grad().defined()) {
    torch::add_out(slot, parameter.grad(), grad);
  } else {
    slot.copy_(grad);
  }
  --bucket.waiting;
  launch_ready();
}

void GradientBuckets::launch_ready() {
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].waiting == 0) {
    Bucket& bucket = buckets_[next_launch_++];
    bucket.work = comm_.allreduce_async(bucket.flat, ReduceOp::Sum);
    bytes_reduced_ += bucket.flat.nbytes();
  }
}

void GradientBuckets::finish() {
  SHARDLORA_CHECK(armed_, "gradient buckets: finish() without arm()");
  torch::NoGradGuard no_grad;
  // Parameters backward did not reach contribute what they hold (or zeros).
  for (size_t index = 0; index < parameters_.size(); ++index) {
    if (arrived_[index]) continue;
    arrived_[index] = true;
    Bucket& bucket = buckets_[bucket_of_[index]];
    auto slot = bucket.flat.slice(0, offset_of_[index], offset_of_[index] + parameters_[index].numel());
    const torch::Tensor& grad = parameters_[index].grad();
    grad.defined() ? slot.copy_(grad.reshape(-1)) : slot.zero_();
    --bucket.waiting;
  }
  launch_ready();
  for (auto& bucket : buckets_) {
    bucket.work->wait();
    bucket.work.reset();
  }
  for (size_t index = 0; index < parameters_.size(); ++index) {
    torch::Tensor& parameter = parameters_[index];
    const Bucket& bucket = buckets_[bucket_of_[index]];
    const auto sum = bucket.flat.slice(0, offset_of_[index], offset_of_[index] + parameter.numel()).view_as(parameter);
    if (parameter.grad().defined()) {
      parameter.mutable_grad().copy_(sum);
    } else {
      parameter.mutable_grad() = sum.clone();
    }
  }
  armed_ = false;
}

}  // namespace shardlora::dist
