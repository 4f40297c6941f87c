// AdamW over the LoRA parameters (fp32) with the optimizer state where the recipe puts it:
//   device  state beside the parameters; the fused kernel runs there.
//   cpu     state in host memory (pinned when the parameters are on a GPU): gradients are
//           copied to the host, the fused multi-threaded CPU kernel updates a host master
//           copy, parameters are copied back asynchronously.
//   paged   state in host memory in fixed-size pages; a staging buffer of `staging_pages`
//           pages beside the parameters; each page streams in, is updated there, streams
//           back, double-buffered on a copy stream. Parameters on the CPU need no
//           staging: their host pages are updated in place (as the cpu placement does).
// State is 32-bit (default) or 8-bit blockwise as bitsandbytes keeps it (tensors under
// min_8bit_size elements stay 32-bit). The update is torch::optim::AdamW's (kernels/adamw.h).
//
// Each step: the global gradient norm (its square summed across ranks by a callback), a
// skipped step when it is not finite (parameters and state untouched, counted), clipping to
// max_grad_norm as torch.nn.utils.clip_grad_norm_ does (folded into the kernel), the
// learning rate from the schedule.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shardlora/kernels/adamw.h"
#include "shardlora/optim/lr_schedule.h"

namespace shardlora::optim {

enum class Placement { Device, Cpu, Paged };

std::optional<Placement> placement_from_name(const std::string& name);  // device, cpu, paged
const char* placement_name(Placement placement);

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
  int state_bits = 32;            // 32 or 8
  int64_t min_8bit_size = 4096;   // smaller tensors keep 32-bit state (bitsandbytes' rule)
  Placement placement = Placement::Cpu;
  int64_t page_elements = 1 << 20;  // paged: state elements per page, a multiple of 256
  int64_t staging_pages = 4;        // paged: pages the staging buffer holds (optimizer.gpu_pages)
  double max_grad_norm = 0.0;       // 0: no clipping
  // By parameter, the factor on the scheduled rate (a torch param group's lr): LoRA+ gives
  // the B matrices its ratio. Empty: 1 for every parameter.
  std::vector<double> lr_multipliers;
  LrSchedule schedule;
  int threads = 0;                  // CPU update threads; 0: OpenMP's default
};

struct StepReport {
  bool applied = false;     // false: a non-finite gradient norm skipped the update
  double grad_norm = 0.0;   // global, before clipping
  double lr = 0.0;          // the rate this step used
};

// Sums a per-rank squared gradient norm over all ranks; identity on one rank.
using SquaredNormReduce = std::function<double(double)>;

class AdamW {
 public:
  // Parameters: fp32, contiguous, all on one device. Throws on invalid options.
  AdamW(std::vector<torch::Tensor> params, const AdamWOptions& options);
  ~AdamW();
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  StepReport step(const SquaredNormReduce& reduce = nullptr);
  void zero_grad();

  int64_t updates() const { return updates_; }             // applied steps (bias correction's t)
  int64_t skipped_steps() const { return skipped_; }
  int64_t schedule_step() const { return schedule_step_; } // step() calls so far
  double current_lr() const;                               // the rate the next step will use
  const AdamWOptions& options() const { return options_; }

  // Bytes of optimizer state (moments, codes, absmax), measured from the tensors.
  int64_t state_bytes() const;

  // Step counters and every parameter's state as CPU tensors, by name:
  //   step.updates / step.skipped / step.schedule                    int64 [1]
  //   state.<i>.exp_avg / .exp_avg_sq                                 32-bit state
  //   state.<i>.exp_avg.codes / .exp_avg.absmax / .exp_avg_sq.*       8-bit state
  std::map<std::string, torch::Tensor> state_dict() const;
  // Restores a state_dict of an optimizer over the same parameter shapes and state bits
  // (placement and paging may differ); errors name `label` and the key.
  void load_state_dict(const std::map<std::string, torch::Tensor>& state, const std::string& label);

  // The state_dict as one safetensors file, written atomically, and read back.
  void save(const std::string& path) const;
  void load(const std::string& path);

 private:
  struct ParamState;
  class Pager;
  class HostTransfers;
  void update(size_t index, const kernels::AdamWScalars& scalars);

  AdamWOptions options_;
  std::vector<ParamState> params_;
  std::unique_ptr<Pager> pager_;
  std::unique_ptr<HostTransfers> host_transfers_;
  int64_t updates_ = 0, skipped_ = 0, schedule_step_ = 0;
};

}  // namespace shardlora::optim
