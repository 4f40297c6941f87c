#include "shardlora/optim/adamw.h"

#include <cmath>

#include "shardlora/io/tensor_file.h"
#include "shardlora/kernels/check.h"
#include "shardlora/kernels/device.h"

namespace shardlora::optim {
namespace {

kernels::Device kernel_device(const torch::Device& device) {
  return device.is_cuda() ? kernels::Device::cuda(device.index() < 0 ? 0 : device.index()) : kernels::Device::cpu();
}

// Raw pointers to one span of a parameter's state (32-bit: m, v; 8-bit: the codes and
// absmax), already offset to the span's first element.
struct StateSpan {
  float* m = nullptr;
  float* v = nullptr;
  uint8_t* m_codes = nullptr;
  float* m_absmax = nullptr;
  uint8_t* v_codes = nullptr;
  float* v_absmax = nullptr;
};

void run_kernel(bool eight_bit, float* param, const float* grad, const StateSpan& span, int64_t count,
                const kernels::AdamWScalars& scalars, kernels::Device device, kernels::Stream stream, int threads) {
  if (eight_bit) {
    kernels::adamw_step_8bit(param, grad, {span.m_codes, span.m_absmax, span.v_codes, span.v_absmax}, count, scalars,
                             device, stream, threads);
  } else {
    kernels::adamw_step_32bit(param, grad, {span.m, span.v}, count, scalars, device, stream, threads);
  }
}

void check_gradient(const torch::Tensor& param, const torch::Tensor& grad) {
  SHARDLORA_CHECK(grad.scalar_type() == torch::kFloat32 && grad.is_contiguous() && grad.sizes() == param.sizes(),
                  "AdamW: the gradient of a ", param.sizes(), " parameter must be a contiguous float32 tensor of its shape");
}

}  // namespace

std::optional<Placement> placement_from_name(const std::string& name) {
  if (name == "device") return Placement::Device;
  if (name == "cpu") return Placement::Cpu;
  if (name == "paged") return Placement::Paged;
  return std::nullopt;
}

const char* placement_name(Placement placement) {
  switch (placement) {
    case Placement::Device: return "device";
    case Placement::Cpu: return "cpu";
    case Placement::Paged: return "paged";
  }
  return "?";
}

// One parameter's state. Each state array is flat; `granularity` elements of the parameter
// share one entry (1 for moments and codes, 256 for 8-bit absmax).
struct AdamW::ParamState {
  struct Array {
    std::string name;  // state_dict suffix
    torch::Tensor tensor;
    int64_t granularity;
  };
  torch::Tensor param;
  int64_t numel = 0;
  double lr_multiplier = 1.0;
  bool eight_bit = false;
  std::vector<Array> arrays;     // exp_avg, exp_avg_sq (32-bit) or their codes and absmax (8-bit)
  torch::Tensor host_param, host_grad;  // cpu placement with parameters on a GPU

  // The span of the state starting at parameter element `first`, in `arrays` (or in staged
  // copies laid out like them).
  StateSpan span(const std::vector<torch::Tensor>& tensors, int64_t first) const {
    StateSpan s;
    if (eight_bit) {
      s.m_codes = tensors[0].data_ptr<uint8_t>() + first;
      s.m_absmax = tensors[1].data_ptr<float>() + first / kernels::kAdamW8bitBlocksize;
      s.v_codes = tensors[2].data_ptr<uint8_t>() + first;
      s.v_absmax = tensors[3].data_ptr<float>() + first / kernels::kAdamW8bitBlocksize;
    } else {
      s.m = tensors[0].data_ptr<float>() + first;
      s.v = tensors[1].data_ptr<float>() + first;
    }
    return s;
  }
  std::vector<torch::Tensor> tensors() const {
    std::vector<torch::Tensor> list;
    for (const Array& array : arrays) list.push_back(array.tensor);
    return list;
  }
};

// Paged placement: streams each page of a parameter's host state through `slots` staging
// slots beside the parameters. Pages are page_elements long (a multiple of the 8-bit block,
// so paging never splits a block and the result equals the unpaged update bit for bit).
// Loads run on a copy stream up to `slots` pages ahead, the kernel on a compute stream after
// its load's event, the store after the kernel's event; a slot is reloaded only behind its
// store in the copy stream's order. Only parameters on a GPU page: on the CPU the host pages
// are updated where they are (paged is then the cpu placement, with no staging copies).
class AdamW::Pager {
 public:
  Pager(int64_t page_elements, int64_t slots, const torch::Device& device)
      : page_(page_elements), slots_(slots), device_(device) {
    copy_stream_ = kernels::cuda_stream_create();
    compute_stream_ = kernels::cuda_stream_create();
    for (int64_t s = 0; s < slots; ++s) {
      loaded_.push_back(kernels::cuda_event_create());
      updated_.push_back(kernels::cuda_event_create());
    }
  }

  ~Pager() {
    for (auto event : loaded_) kernels::cuda_event_destroy(event);
    for (auto event : updated_) kernels::cuda_event_destroy(event);
    kernels::cuda_stream_destroy(copy_stream_);
    kernels::cuda_stream_destroy(compute_stream_);
  }

  void update(ParamState& state, const torch::Tensor& grad, const kernels::AdamWScalars& scalars, int threads) {
    const std::vector<torch::Tensor>& staged = staging_for(state);
    const int64_t pages = (state.numel + page_ - 1) / page_;
    const auto transfer = [&](int64_t page, bool load) {
      const int64_t slot = page % slots_, first = page * page_, count = std::min(page_, state.numel - first);
      for (size_t a = 0; a < state.arrays.size(); ++a) {
        const auto& array = state.arrays[a];
        const int64_t entries = (count + array.granularity - 1) / array.granularity;
        const size_t bytes = static_cast<size_t>(entries * array.tensor.element_size());
        auto* host = static_cast<uint8_t*>(array.tensor.data_ptr()) + first / array.granularity * array.tensor.element_size();
        auto* stage = static_cast<uint8_t*>(staged[a].data_ptr()) + slot * (page_ / array.granularity) * array.tensor.element_size();
        kernels::cuda_copy_async(load ? stage : host, load ? host : stage, bytes, copy_stream_);
      }
    };
    const auto compute = [&](int64_t page) {
      const int64_t slot = page % slots_, first = page * page_, count = std::min(page_, state.numel - first);
      run_kernel(state.eight_bit, state.param.data_ptr<float>() + first, grad.data_ptr<float>() + first,
                 state.span(staged, slot * page_), count, scalars, kernel_device(device_), compute_stream_, threads);
    };
    for (int64_t page = 0; page < std::min(slots_, pages); ++page) {
      transfer(page, true);
      kernels::cuda_event_record(loaded_[page], copy_stream_);
    }
    for (int64_t page = 0; page < pages; ++page) {
      const int64_t slot = page % slots_;
      kernels::cuda_stream_wait_event(compute_stream_, loaded_[slot]);
      compute(page);
      kernels::cuda_event_record(updated_[slot], compute_stream_);
      kernels::cuda_stream_wait_event(copy_stream_, updated_[slot]);
      transfer(page, false);
      if (page + slots_ < pages) {
        transfer(page + slots_, true);
        kernels::cuda_event_record(loaded_[slot], copy_stream_);
      }
    }
    kernels::cuda_stream_synchronize(copy_stream_);  // the last store follows the last update
  }

 private:
  // Slots laid out like a parameter's state arrays, allocated on first use per state kind.
  const std::vector<torch::Tensor>& staging_for(const ParamState& state) {
    std::vector<torch::Tensor>& staged = state.eight_bit ? staging8_ : staging32_;
    if (staged.empty()) {
      for (const auto& array : state.arrays) {
        staged.push_back(torch::empty({slots_ * (page_ / array.granularity)},
                                      torch::TensorOptions().dtype(array.tensor.scalar_type()).device(device_)));
      }
    }
    return staged;
  }

  int64_t page_, slots_;
  torch::Device device_;
  std::vector<torch::Tensor> staging32_, staging8_;
  kernels::Stream copy_stream_ = nullptr, compute_stream_ = nullptr;
  std::vector<kernels::Event> loaded_, updated_;
};

// Cpu placement with parameters on a GPU: every gradient is queued for the host on a copy
// stream as the step begins, behind the backward already queued, and every updated
// parameter goes back on a second one as soon as its host update ends. The host waits only
// for the gradient it updates next, so the copies hide under the gradient norm and the other
// parameters' updates (the gradients are final only when backward and the token
// normalisation have run, and clipping needs all of them: the update cannot start earlier).
class AdamW::HostTransfers {
 public:
  explicit HostTransfers(size_t params)
      : download_(kernels::cuda_stream_create()), upload_(kernels::cuda_stream_create()), queued_(kernels::cuda_event_create()) {
    for (size_t i = 0; i < params; ++i) downloaded_.push_back(kernels::cuda_event_create());
  }

  ~HostTransfers() {
    for (auto event : downloaded_) kernels::cuda_event_destroy(event);
    kernels::cuda_event_destroy(queued_);
    kernels::cuda_stream_destroy(upload_);
    kernels::cuda_stream_destroy(download_);
  }

  void download(const std::vector<ParamState>& params) {
    for (const ParamState& state : params) {
      if (state.param.grad().defined()) check_gradient(state.param, state.param.grad());  // before any copy is queued
    }
    kernels::cuda_event_record(queued_, nullptr);  // libtorch's work runs on the legacy default stream
    kernels::cuda_stream_wait_event(download_, queued_);
    for (size_t i = 0; i < params.size(); ++i) {
      const torch::Tensor& grad = params[i].param.grad();
      if (!grad.defined()) continue;
      kernels::cuda_copy_async(params[i].host_grad.data_ptr(), grad.data_ptr(), grad.nbytes(), download_);
      kernels::cuda_event_record(downloaded_[i], download_);
    }
  }

  void wait_for_gradient(size_t index) { kernels::cuda_event_synchronize(downloaded_[index]); }

  void upload(const ParamState& state) {
    kernels::cuda_copy_async(state.param.data_ptr(), state.host_param.data_ptr(), state.host_param.nbytes(), upload_);
  }

 private:
  kernels::Stream download_, upload_;
  kernels::Event queued_;
  std::vector<kernels::Event> downloaded_;
};

AdamW::AdamW(std::vector<torch::Tensor> params, const AdamWOptions& options) : options_(options) {
  SHARDLORA_CHECK(!params.empty(), "AdamW: no parameters to optimize");
  SHARDLORA_CHECK(options.lr >= 0, "AdamW: lr must be non-negative, found ", options.lr);
  SHARDLORA_CHECK(options.beta1 >= 0 && options.beta1 < 1, "AdamW: beta1 must be in [0, 1), found ", options.beta1);
  SHARDLORA_CHECK(options.beta2 >= 0 && options.beta2 < 1, "AdamW: beta2 must be in [0, 1), found ", options.beta2);
  SHARDLORA_CHECK(options.eps > 0, "AdamW: eps must be positive, found ", options.eps);
  SHARDLORA_CHECK(options.weight_decay >= 0, "AdamW: weight_decay must be non-negative, found ", options.weight_decay);
  SHARDLORA_CHECK(options.state_bits == 32 || options.state_bits == 8, "AdamW: state bits must be 32 or 8, found ",
                  options.state_bits);
  SHARDLORA_CHECK(options.max_grad_norm >= 0, "AdamW: max_grad_norm must be non-negative, found ", options.max_grad_norm);
  SHARDLORA_CHECK(options.lr_multipliers.empty() || options.lr_multipliers.size() == params.size(), "AdamW: ",
                  options.lr_multipliers.size(), " learning-rate multipliers for ", params.size(), " parameters");
  options.schedule.validate();
  if (options.placement == Placement::Paged) {
    SHARDLORA_CHECK(options.page_elements > 0 && options.page_elements % kernels::kAdamW8bitBlocksize == 0,
                    "AdamW: page_elements must be a positive multiple of ", kernels::kAdamW8bitBlocksize, ", found ",
                    options.page_elements);
    SHARDLORA_CHECK(options.staging_pages >= 1, "AdamW: the staging buffer needs at least one page, found ",
                    options.staging_pages);
  }
  const torch::Device device = params.front().device();
  if (device.is_cuda()) kernels::cuda_set_device(device.index() < 0 ? 0 : device.index());
  // Host state is pinned when the parameters live on a GPU, so copies overlap.
  const bool state_on_device = options.placement == Placement::Device || device.is_cpu();
  const auto state_options = [&](c10::ScalarType dtype) {
    // The CPU named: Tensor::to() keeps a tensor's device where the options name none.
    const torch::Device state_device = state_on_device ? device : torch::Device(torch::kCPU);
    return torch::TensorOptions().dtype(dtype).device(state_device).pinned_memory(!state_on_device && device.is_cuda());
  };
  for (size_t i = 0; i < params.size(); ++i) {
    const torch::Tensor& param = params[i];
    SHARDLORA_CHECK(param.scalar_type() == torch::kFloat32 && param.is_contiguous(), "AdamW: parameter ", i,
                    " must be a contiguous float32 tensor, found ", param.scalar_type());
    SHARDLORA_CHECK(param.device() == device, "AdamW: parameter ", i, " is on ", param.device(), ", parameter 0 on ", device);
    ParamState state;
    state.param = param;
    state.numel = param.numel();
    if (!options.lr_multipliers.empty()) {
      state.lr_multiplier = options.lr_multipliers[i];
      SHARDLORA_CHECK(state.lr_multiplier >= 0, "AdamW: parameter ", i, "'s learning-rate multiplier is negative");
    }
    state.eight_bit = options.state_bits == 8 && state.numel >= options.min_8bit_size;
    if (state.eight_bit) {
      const int64_t blocks = kernels::adamw_8bit_blocks(state.numel);
      state.arrays = {{"exp_avg.codes", torch::zeros({state.numel}, state_options(torch::kUInt8)), 1},
                      {"exp_avg.absmax", torch::zeros({blocks}, state_options(torch::kFloat32)), kernels::kAdamW8bitBlocksize},
                      {"exp_avg_sq.codes", torch::zeros({state.numel}, state_options(torch::kUInt8)), 1},
                      {"exp_avg_sq.absmax", torch::zeros({blocks}, state_options(torch::kFloat32)), kernels::kAdamW8bitBlocksize}};
    } else {
      state.arrays = {{"exp_avg", torch::zeros({state.numel}, state_options(torch::kFloat32)), 1},
                      {"exp_avg_sq", torch::zeros({state.numel}, state_options(torch::kFloat32)), 1}};
    }
    if (options.placement == Placement::Cpu && device.is_cuda()) {
      state.host_param = param.detach().to(state_options(torch::kFloat32), /*non_blocking=*/false, /*copy=*/true);
      state.host_grad = torch::empty_like(state.host_param);
    }
    params_.push_back(std::move(state));
  }
  if (options.placement == Placement::Paged && device.is_cuda()) {
    pager_ = std::make_unique<Pager>(options.page_elements, options.staging_pages, device);
  }
  if (options.placement == Placement::Cpu && device.is_cuda()) host_transfers_ = std::make_unique<HostTransfers>(params_.size());
}

AdamW::~AdamW() = default;

double AdamW::current_lr() const { return options_.lr * options_.schedule.multiplier(schedule_step_); }

StepReport AdamW::step(const SquaredNormReduce& reduce) {
  StepReport report;
  report.lr = current_lr();
  ++schedule_step_;
  const bool on_gpu = params_.front().param.is_cuda();
  if (host_transfers_) host_transfers_->download(params_);  // under the norm and the updates
  // Per-tensor norms accumulated in fp32 (torch's cascade sum, as clip_grad_norm_ does: no
  // fp64 copy of a gradient), squared and summed in fp64, read back with one synchronization.
  std::vector<torch::Tensor> norms;
  for (const ParamState& state : params_) {
    if (state.param.grad().defined()) norms.push_back(at::linalg_vector_norm(state.param.grad(), 2));
  }
  double squared_norm = norms.empty() ? 0.0 : torch::stack(norms).to(torch::kFloat64).square().sum().item<double>();
  if (reduce) squared_norm = reduce(squared_norm);
  report.grad_norm = std::sqrt(squared_norm);
  if (!std::isfinite(report.grad_norm)) {
    ++skipped_;
    if (host_transfers_) kernels::cuda_synchronize();  // no download outlives this step: zero_grad writes the gradients
    return report;
  }
  // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1.
  double grad_scale = 1.0;
  if (options_.max_grad_norm > 0) grad_scale = std::min(1.0, options_.max_grad_norm / (report.grad_norm + 1e-6));
  ++updates_;
  // One set of scalars per rate, as torch steps each param group with its own lr.
  std::map<double, kernels::AdamWScalars> scalars;
  for (const ParamState& state : params_) {
    if (!scalars.count(state.lr_multiplier)) {
      scalars.emplace(state.lr_multiplier, kernels::AdamWScalars::at_step(report.lr * state.lr_multiplier, options_.beta1, options_.beta2,
                                                                         options_.eps, options_.weight_decay, updates_, grad_scale));
    }
  }
  if (on_gpu && !host_transfers_) kernels::cuda_synchronize();  // gradients complete before other streams read them
  for (size_t i = 0; i < params_.size(); ++i) update(i, scalars.at(params_[i].lr_multiplier));
  if (on_gpu) kernels::cuda_synchronize();
  report.applied = true;
  return report;
}

void AdamW::update(size_t index, const kernels::AdamWScalars& scalars) {
  ParamState& state = params_[index];
  const torch::Tensor grad = state.param.grad();
  if (!grad.defined()) return;
  check_gradient(state.param, grad);
  if (pager_) {
    pager_->update(state, grad, scalars, options_.threads);
  } else if (host_transfers_) {
    host_transfers_->wait_for_gradient(index);
    run_kernel(state.eight_bit, state.host_param.data_ptr<float>(), state.host_grad.data_ptr<float>(),
               state.span(state.tensors(), 0), state.numel, scalars, kernels::Device::cpu(), nullptr, options_.threads);
    host_transfers_->upload(state);
  } else {
    run_kernel(state.eight_bit, state.param.data_ptr<float>(), grad.data_ptr<float>(), state.span(state.tensors(), 0),
               state.numel, scalars, kernel_device(state.param.device()), nullptr, options_.threads);
  }
  // The kernels write through raw pointers: say so as torch's in-place ops do (what is cached
  // from the parameter, DoRA's weight norm, is keyed on its version).
  state.param.unsafeGetTensorImpl()->bump_version();
}

void AdamW::zero_grad() {
  for (ParamState& state : params_) {
    if (state.param.grad().defined()) state.param.mutable_grad().zero_();
  }
}

int64_t AdamW::state_bytes() const {
  int64_t bytes = 0;
  for (const ParamState& state : params_) {
    for (const auto& array : state.arrays) bytes += array.tensor.nbytes();
  }
  return bytes;
}

std::map<std::string, torch::Tensor> AdamW::state_dict() const {
  std::map<std::string, torch::Tensor> dict = {{"step.updates", torch::tensor({updates_})},
                                               {"step.skipped", torch::tensor({skipped_})},
                                               {"step.schedule", torch::tensor({schedule_step_})}};
  for (size_t i = 0; i < params_.size(); ++i) {
    for (const auto& array : params_[i].arrays) {
      dict["state." + std::to_string(i) + "." + array.name] = array.tensor.to(torch::kCPU, false, /*copy=*/true);
    }
  }
  return dict;
}

void AdamW::load_state_dict(const std::map<std::string, torch::Tensor>& dict, const std::string& label) {
  const auto find = [&](const std::string& key, c10::ScalarType dtype, int64_t numel) -> const torch::Tensor& {
    const auto it = dict.find(key);
    SHARDLORA_CHECK(it != dict.end(), label, ": missing optimizer state '", key, "' (saved with other parameters or ",
                    options_.state_bits == 8 ? "32-bit" : "8-bit", " state?)");
    SHARDLORA_CHECK(it->second.scalar_type() == dtype && it->second.numel() == numel, label, ": optimizer state '", key,
                    "' is ", it->second.scalar_type(), " with ", it->second.numel(), " elements, expected ", dtype, " with ",
                    numel);
    return it->second;
  };
  size_t expected_keys = 3;
  for (size_t i = 0; i < params_.size(); ++i) {
    for (const auto& array : params_[i].arrays) {
      find("state." + std::to_string(i) + "." + array.name, array.tensor.scalar_type(), array.tensor.numel());
      ++expected_keys;
    }
  }
  SHARDLORA_CHECK(dict.size() == expected_keys, label, ": ", dict.size(), " optimizer state entries, expected ", expected_keys,
                  " for ", params_.size(), " parameters");
  const auto counter = [&](const char* key) { return find(key, torch::kInt64, 1).item<int64_t>(); };
  updates_ = counter("step.updates");
  skipped_ = counter("step.skipped");
  schedule_step_ = counter("step.schedule");
  for (size_t i = 0; i < params_.size(); ++i) {
    for (auto& array : params_[i].arrays) array.tensor.copy_(dict.at("state." + std::to_string(i) + "." + array.name).view(-1));
    if (params_[i].host_param.defined()) params_[i].host_param.copy_(params_[i].param.detach());
  }
}

void AdamW::save(const std::string& path) const {
  io::write_tensor_file(path, state_dict(), {{"format", "pt"}, {"shardlora", "adamw"}, {"state_bits", std::to_string(options_.state_bits)}});
}

void AdamW::load(const std::string& path) { load_state_dict(io::read_tensor_file(path), path); }

}  // namespace shardlora::optim
