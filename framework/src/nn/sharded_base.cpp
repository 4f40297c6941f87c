#include "shardlora/nn/sharded_base.h"

#include "shardlora/kernels/blockwise_8bit.h"
#include "shardlora/kernels/check.h"
#include "shardlora/kernels/quantize_4bit.h"
#include "shardlora/tensor/dtypes.h"

namespace shardlora::nn {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The three buffers of packed state in a layer's unit layout (nested undefined without
// double quantization).
struct Packed {
  torch::Tensor codes, absmax, nested;

  std::vector<torch::Tensor> parts() const {
    std::vector<torch::Tensor> all = {codes, absmax};
    if (nested.defined()) all.push_back(nested);
    return all;
  }
  int64_t bytes() const {
    int64_t total = 0;
    for (const auto& part : parts()) total += part.nbytes();
    return total;
  }
};

}  // namespace

struct ShardedBase::Layer {
  int64_t blocksize = 64;
  int64_t unit_blocks = kernels::kDoubleQuantBlocksize;  // absmax entries per unit
  bool nested = true;
  int64_t total_units = 0, units_per_rank = 0;
  std::vector<int64_t> first_unit;      // per Linear
  std::vector<quant::QuantState> meta;  // per Linear: all but its tensors of codes and scales
  Packed local;                         // this rank's units

  int64_t unit_elements() const { return blocksize * unit_blocks; }
  int64_t units_of(const quant::QuantState& state) const { return ceil_div(state.numel(), unit_elements()); }
  int64_t unpadded_bytes() const {
    int64_t bytes = 0;
    for (const auto& state : meta) {
      bytes += (state.numel() + 1) / 2 + state.blocks() * (nested ? 1 : 4) + (nested ? units_of(state) * 4 : 0);
    }
    return bytes;
  }
};

struct ShardedBase::Slot {
  int64_t layer = -1;
  Packed buffers;                       // world_size x units_per_rank units
  std::vector<quant::QuantState> states;  // views into the buffers
  std::vector<std::unique_ptr<dist::Work>> pending;
};

ShardedLinear4bit::ShardedLinear4bit(ShardedBase& owner, int64_t layer, size_t position, std::vector<int64_t> shape,
                                     std::optional<torch::Tensor> bias)
    : QuantizedLinear(std::move(shape), std::move(bias)), owner_(&owner), layer_(layer), position_(position) {}

const quant::QuantState& ShardedLinear4bit::state() const { return owner_->gathered(layer_, position_); }

ShardedBase::ShardedBase(dist::Communicator& comm, const quant::QuantConfig& config, torch::Device device, int64_t layers)
    : comm_(comm), config_(config), device_(device) {
  layers_.resize(static_cast<size_t>(layers));
  for (int i = 0; i < 2; ++i) slots_.push_back(std::make_unique<Slot>());
}

ShardedBase::~ShardedBase() {
  // A gather still in flight owns its buffers: let it land before they are freed.
  for (auto& slot : slots_) {
    for (auto& work : slot->pending) {
      try {
        work->wait();
      } catch (const std::exception&) {
        // The job is failing already; the communicator reports it.
      }
    }
  }
}

std::vector<std::shared_ptr<ShardedLinear4bit>> ShardedBase::add_layer(int64_t index, const std::vector<LayerWeight>& weights,
                                                                       const std::string& label) {
  SHARDLORA_CHECK(index >= 0 && index < static_cast<int64_t>(layers_.size()) && !weights.empty(), "bad sharded layer ", index);
  auto layer = std::make_unique<Layer>();
  for (const LayerWeight& weight : weights) {
    const std::string where = label + ": tensor '" + weight.name + "'";
    quant::QuantState meta;
    if (weight.prequantized) {
      meta = *weight.prequantized;
      meta.code = meta.code.to(device_);
    } else {
      SHARDLORA_CHECK(weight.float_weight.dim() == 2 && is_float_type(weight.float_weight.scalar_type()), where,
                      ": cannot quantize a ", c10::toString(weight.float_weight.scalar_type()), " tensor of ",
                      weight.float_weight.dim(), " dimensions");
      meta = quant::state_layout(config_, weight.float_weight.sizes().vec(), weight.float_weight.scalar_type(), device_);
    }
    const int64_t unit_blocks = meta.nested ? meta.nested_blocksize : kernels::kDoubleQuantBlocksize;
    if (layer->meta.empty()) {
      layer->blocksize = meta.blocksize;
      layer->nested = meta.nested;
      layer->unit_blocks = unit_blocks;
    }
    SHARDLORA_CHECK(meta.blocksize == layer->blocksize && meta.nested == layer->nested && unit_blocks == layer->unit_blocks,
                    where, ": blocksize ", meta.blocksize, ", double quant ", meta.nested ? "on" : "off", ", but '",
                    weights.front().name, "' has ", layer->blocksize, " and ", layer->nested ? "on" : "off",
                    "; distributed.strategy shard needs one layout per layer (replicate does not)");
    layer->meta.push_back(std::move(meta));
  }
  for (const auto& state : layer->meta) {
    layer->first_unit.push_back(layer->total_units);
    layer->total_units += layer->units_of(state);
  }
  const int64_t world = comm_.world_size(), rank = comm_.rank();
  layer->units_per_rank = ceil_div(layer->total_units, world);
  const int64_t own_begin = std::min(rank * layer->units_per_rank, layer->total_units);
  const int64_t own_end = std::min(own_begin + layer->units_per_rank, layer->total_units);
  const int64_t unit_code_bytes = layer->unit_elements() / 2;
  const auto on_device = torch::TensorOptions().device(device_);
  Packed& local = layer->local;
  local.codes = torch::zeros({layer->units_per_rank * unit_code_bytes}, on_device.dtype(torch::kUInt8));
  local.absmax = torch::zeros({layer->units_per_rank * layer->unit_blocks}, on_device.dtype(layer->nested ? torch::kUInt8 : torch::kFloat32));
  if (layer->nested) local.nested = torch::zeros({layer->units_per_rank}, on_device.dtype(torch::kFloat32));

  // fp32 absmax of this rank's part of each float weight, kept until its offset is agreed.
  std::vector<torch::Tensor> float_absmax(weights.size());
  torch::Tensor chunk_sums = torch::zeros({layer->total_units}, on_device.dtype(torch::kFloat64));
  bool any_float = false;
  for (size_t i = 0; i < weights.size(); ++i) {
    const quant::QuantState& meta = layer->meta[i];
    const int64_t first = layer->first_unit[i];
    const int64_t begin = std::max(first, own_begin), end = std::min(first + layer->units_of(meta), own_end);
    any_float = any_float || !weights[i].prequantized;
    if (begin >= end) continue;
    const int64_t element = (begin - first) * layer->unit_elements();
    const int64_t count = std::min((end - first) * layer->unit_elements(), meta.numel()) - element;
    const int64_t blocks = ceil_div(count, meta.blocksize);
    const int64_t local_unit = begin - own_begin;
    uint8_t* codes = local.codes.data_ptr<uint8_t>() + local_unit * unit_code_bytes;
    if (const auto& source = weights[i].prequantized) {
      const int64_t bytes = (count + 1) / 2;
      local.codes.narrow(0, local_unit * unit_code_bytes, bytes).copy_(source->codes.reshape(-1).narrow(0, element / 2, bytes));
      local.absmax.narrow(0, local_unit * layer->unit_blocks, blocks).copy_(source->absmax.narrow(0, element / meta.blocksize, blocks));
      if (layer->nested) local.nested.narrow(0, local_unit, end - begin).copy_(source->nested_absmax.narrow(0, begin - first, end - begin));
      continue;
    }
    const torch::Tensor slice = weights[i].float_weight.reshape(-1).narrow(0, element, count).to(device_).contiguous();
    torch::Tensor absmax = torch::empty({blocks}, on_device.dtype(torch::kFloat32));
    kernels::quantize_4bit(slice.data_ptr(), to_kernels_dtype(slice.scalar_type()),
                           {meta.type, codes, absmax.data_ptr<float>(), count, meta.blocksize}, kernel_device(slice));
    try {
      quant::check_finite_absmax(absmax, meta.blocksize, element);
    } catch (const Error& error) {
      throw Error(label + ": tensor '" + weights[i].name + "': " + error.what());
    }
    if (layer->nested) {
      kernels::chunk_sums_f64(absmax.data_ptr<float>(), blocks, layer->unit_blocks, chunk_sums.data_ptr<double>() + begin,
                              kernel_device(absmax));
      float_absmax[i] = absmax;
    } else {
      local.absmax.narrow(0, local_unit * layer->unit_blocks, blocks).copy_(absmax);
    }
  }

  if (layer->nested && any_float) {
    // Every chunk's sum comes from its one holder (others add zeros, exactly): the offsets
    // are those of quantizing each whole weight in one process.
    comm_.allreduce(chunk_sums, dist::ReduceOp::Sum);
    const torch::Tensor sums = chunk_sums.cpu();
    for (size_t i = 0; i < weights.size(); ++i) {
      if (weights[i].prequantized) continue;
      quant::QuantState& meta = layer->meta[i];
      meta.nested_offset = kernels::absmax_mean(sums.data_ptr<double>() + layer->first_unit[i], layer->units_of(meta), meta.blocks());
      if (!float_absmax[i].defined()) continue;
      const int64_t local_unit = std::max(layer->first_unit[i], own_begin) - own_begin;
      kernels::quantize_8bit_blockwise(float_absmax[i].data_ptr<float>(), meta.nested_offset,
                                       {kernels::QuantType::DYNAMIC8_SIGNED, float_absmax[i].numel(), layer->unit_blocks, nullptr},
                                       local.absmax.data_ptr<uint8_t>() + local_unit * layer->unit_blocks,
                                       local.nested.data_ptr<float>() + local_unit, kernel_device(float_absmax[i]));
    }
  }

  std::vector<std::shared_ptr<ShardedLinear4bit>> linears;
  for (auto& meta : layer->meta) meta.codes = meta.absmax = meta.nested_absmax = torch::Tensor();  // drop the checkpoint's views
  for (size_t i = 0; i < weights.size(); ++i) {
    linears.push_back(std::make_shared<ShardedLinear4bit>(*this, index, i, layer->meta[i].shape, weights[i].bias));
  }
  layers_[static_cast<size_t>(index)] = std::move(layer);
  return linears;
}

void ShardedBase::start_gather(Slot& slot, int64_t index) {
  const Layer& layer = *layers_[static_cast<size_t>(index)];
  const int64_t world = comm_.world_size();
  for (auto& work : slot.pending) work->wait();  // a prefetch that guessed wrong still owns the buffers
  slot.pending.clear();
  slot.layer = index;
  slot.states.clear();
  const auto local = layer.local.parts();
  std::vector<torch::Tensor*> gathered = {&slot.buffers.codes, &slot.buffers.absmax, &slot.buffers.nested};
  for (size_t part = 0; part < local.size(); ++part) {
    torch::Tensor& buffer = *gathered[part];
    const int64_t numel = world * local[part].numel();
    // Layers usually share one layout: the buffers are allocated once and reused.
    if (!buffer.defined() || buffer.numel() < numel || buffer.scalar_type() != local[part].scalar_type()) {
      buffer = torch::empty({numel}, local[part].options());
    }
    slot.pending.push_back(comm_.allgather_async(local[part], buffer.narrow(0, 0, numel)));
  }
  for (size_t i = 0; i < layer.meta.size(); ++i) {
    quant::QuantState state = layer.meta[i];
    const int64_t first = layer.first_unit[i];
    const int64_t bytes = (state.numel() + 1) / 2;
    state.codes = slot.buffers.codes.narrow(0, first * layer.unit_elements() / 2, bytes).view({bytes, 1});
    state.absmax = slot.buffers.absmax.narrow(0, first * layer.unit_blocks, state.blocks());
    if (layer.nested) state.nested_absmax = slot.buffers.nested.narrow(0, first, layer.units_of(state));
    slot.states.push_back(std::move(state));
  }
  ++layers_gathered_;
}

ShardedBase::Slot& ShardedBase::resident_slot(int64_t index) {
  const int64_t count = static_cast<int64_t>(layers_.size());
  SHARDLORA_CHECK(index >= 0 && index < count && layers_[static_cast<size_t>(index)], "sharded layer ", index, " was never loaded");
  const auto holding = [&](int64_t layer) -> Slot* {
    for (auto& slot : slots_) {
      if (slot->layer == layer) return slot.get();
    }
    return nullptr;
  };
  if (index == last_layer_ && slots_[current_]->layer == index) return *slots_[current_];
  Slot* slot = holding(index);
  if (!slot) {
    slot = slots_[1 - current_].get();
    start_gather(*slot, index);
  }
  for (auto& work : slot->pending) work->wait();
  slot->pending.clear();
  const bool going_up = index > last_layer_ || index == 0;  // layer 0 starts a forward
  current_ = slot == slots_[0].get() ? 0 : 1;
  last_layer_ = index;
  int64_t next = -1;
  if (going_up) {
    next = index + 1 < count ? index + 1 : backward_follows_ ? count - 2 : 0;
  } else {
    next = index - 1;
  }
  // While the model is built (DoRA's magnitudes read each layer as it is added), the next
  // layer may not be loaded yet: every rank skips the same prefetch.
  if (next >= 0 && layers_[static_cast<size_t>(next)] && !holding(next)) start_gather(*slots_[1 - current_], next);
  return *slot;
}

const quant::QuantState& ShardedBase::gathered(int64_t layer, size_t position) {
  return resident_slot(layer).states.at(position);
}

int64_t ShardedBase::local_bytes() const {
  int64_t bytes = 0;
  for (const auto& layer : layers_) {
    if (layer) bytes += layer->local.bytes();
  }
  return bytes;
}

int64_t ShardedBase::full_bytes() const {
  int64_t bytes = 0;
  for (const auto& layer : layers_) {
    if (layer) bytes += layer->unpadded_bytes();
  }
  return bytes;
}

int64_t ShardedBase::buffer_bytes() const {
  int64_t bytes = 0;
  for (const auto& slot : slots_) bytes += slot->buffers.bytes();
  return bytes;
}

}  // namespace shardlora::nn
