// The 4-bit base of the decoder split across ranks (distributed.strategy: shard): no rank
// holds the whole model, in float or in 4 bits.
//
// Layout. A layer's Linear weights are laid end to end in units of one double-quant chunk:
// U = blocksize x 256 elements, i.e. U/2 bytes of codes, 256 absmax (uint8 with double
// quantization, float32 without) and one nested absmax. Each Linear starts on a unit (its
// last unit padded). The layer's units are split into equal contiguous ranges, one per rank
// (the last ranges padded), so all-gathering each of the three component buffers lays every
// Linear's codes, absmax and nested absmax out contiguously at its unit offset: the gathered
// state is a set of views, equal to the unsharded quantization bit for bit.
//
// Loading. Each rank quantizes only its units of each float weight, reading the memory map.
// The double-quant offset (the mean absmax of a whole weight) comes from one all-reduce per
// layer of per-chunk fp64 sums: each chunk is summed by the one rank that holds it, the
// others contribute zeros, so every rank gets the sums, and the offset, a single process
// computes. Pre-quantized bitsandbytes weights are sliced instead.
//
// Running. A Linear's state() gathers its layer into one of two reusable buffers (three
// all-gathers) unless it is already there, and prefetches the next layer in the direction of
// travel into the other: forward runs layers 0..L-1, backward (and its recomputation)
// L-1..0, after the last layer comes L-2 when backward follows, else layer 0 (the next
// forward). Layers 0 and 1 stay resident from backward to the next step's forward. Every rank
// runs the same layers in the same order, so the collectives match (the communicator's
// contract); callers keep the number of forward passes equal across ranks.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shardlora/dist/communicator.h"
#include "shardlora/nn/linear.h"
#include "shardlora/quant/quant_state.h"

namespace shardlora::nn {

class ShardedBase;

class ShardedLinear4bit : public QuantizedLinear {
 public:
  ShardedLinear4bit(ShardedBase& owner, int64_t layer, size_t position, std::vector<int64_t> shape,
                    std::optional<torch::Tensor> bias);
  // The whole weight, gathered from every rank (a collective call when not resident).
  const quant::QuantState& state() const override;

 private:
  ShardedBase* owner_;
  int64_t layer_;
  size_t position_;
};

// One Linear weight of a layer as the checkpoint holds it: a float tensor (a view of the
// memory map) or a bitsandbytes 4-bit state whose tensors view the checkpoint.
struct LayerWeight {
  std::string name;  // HF tensor name, for errors
  torch::Tensor float_weight;
  std::optional<quant::QuantState> prequantized;
  std::optional<torch::Tensor> bias;  // replicated, already on the device
};

class ShardedBase {
 public:
  // `config` quantizes float weights; tensors live on `device`; the communicator outlives this.
  ShardedBase(dist::Communicator& comm, const quant::QuantConfig& config, torch::Device device, int64_t layers);
  ~ShardedBase();

  // Keeps this rank's units of layer `layer`'s weights (collective: every rank adds the same
  // layers in the same order). Errors name `label` and the tensor.
  std::vector<std::shared_ptr<ShardedLinear4bit>> add_layer(int64_t layer, const std::vector<LayerWeight>& weights,
                                                            const std::string& label);

  // Called at the start of each model forward: whether a backward pass will walk the
  // layers back down (what to prefetch after the last layer).
  void begin_forward(bool backward_follows) { backward_follows_ = backward_follows; }

  // The state of Linear `position` of `layer`, gathered; valid until another layer is asked for.
  const quant::QuantState& gathered(int64_t layer, size_t position);

  int64_t local_bytes() const;   // this rank's shards (padding included)
  int64_t full_bytes() const;    // the whole base over all ranks (padding excluded)
  int64_t buffer_bytes() const;  // the two gather buffers
  int64_t layers_gathered() const { return layers_gathered_; }

 private:
  struct Layer;
  struct Slot;
  Slot& resident_slot(int64_t layer);
  void start_gather(Slot& slot, int64_t layer);

  dist::Communicator& comm_;
  quant::QuantConfig config_;
  torch::Device device_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<std::unique_ptr<Slot>> slots_;  // two
  size_t current_ = 0;                        // the slot the last layer asked for is in
  int64_t last_layer_ = -1;
  bool backward_follows_ = false;
  int64_t layers_gathered_ = 0;
};

}  // namespace shardlora::nn
