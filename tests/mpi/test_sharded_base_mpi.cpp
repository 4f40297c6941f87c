// The sharded 4-bit base under real mpirun (-np 2 and 3): each rank holds its share of the
// packed weights, the gathered state equals the unsharded quantization bit for bit (float
// checkpoints quantized on load, with and without double quantization, and bitsandbytes
// checkpoints), and forward / backward equal the unsharded model's exactly, with the layer
// gathers the prefetch policy promises.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>

#include "shardlora/dist/mpi_communicator.h"
#include "shardlora/nn/hf_loader.h"
#include "shardlora/nn/random_model.h"
#include "shardlora/quant/checkpoint_quantizer.h"

using namespace shardlora;
namespace fs = std::filesystem;

namespace {

dist::MpiCommunicator& comm() {
  static dist::MpiCommunicator communicator;
  return communicator;
}

// Four layers whose Linears span 1 to 3 units of 64 x 256 elements (13 per layer), so rank
// ranges start and end inside Linears.
nn::RandomModelSpec spec() {
  nn::RandomModelSpec s;
  s.hidden = 128;
  s.intermediate = 384;
  s.layers = 4;
  s.heads = 4;
  s.kv_heads = 2;
  return s;
}

// A directory every rank sees: rank 0 creates it and writes the checkpoints.
class ShardedBaseTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char dir[4096] = {};
    if (comm().rank() == 0) {
      std::string name = (fs::temp_directory_path() / "shardlora-sharded-XXXXXX").string();
      ASSERT_NE(mkdtemp(name.data()), nullptr);
      name.copy(dir, sizeof dir - 1);
      nn::write_random_hf_model(name + "/float", spec());
      nn::RandomModelSpec phi3 = spec();  // fused qkv_proj and gate_up_proj, split across ranks alike
      phi3.model_type = "phi3";
      phi3.partial_rotary_factor = 0.5;
      nn::write_random_hf_model(name + "/phi3", phi3);
      quant::quantize_checkpoint(name + "/float", name + "/nf4", {});
      quant::CheckpointQuantizeOptions fp4;
      fp4.quant = {kernels::QuantType::FP4, 128, true};
      quant::quantize_checkpoint(name + "/float", name + "/fp4-128", fp4);
    }
    MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    root_ = dir;
  }
  static void TearDownTestSuite() {
    comm().barrier();
    if (comm().rank() == 0) fs::remove_all(root_);
  }

  static nn::LlamaModel load(const std::string& name, nn::ModelOptions options, bool sharded) {
    options.compute_dtype = torch::kFloat32;
    options.lora.r = 4;
    options.shard_over = sharded ? &comm() : nullptr;
    torch::manual_seed(7);  // the same LoRA initialisation for both
    return nn::load_hf_model(root_ + "/" + name, options);
  }

  static const quant::QuantState& state_of(const nn::LlamaModel& model, size_t i) {
    return dynamic_cast<const nn::QuantizedLinear&>(model->linears()[i].second->base()).state();
  }

  static void expect_bit_equal(const quant::QuantState& got, const quant::QuantState& want, const std::string& where) {
    EXPECT_EQ(got.type, want.type) << where;
    EXPECT_EQ(got.shape, want.shape) << where;
    EXPECT_EQ(got.blocksize, want.blocksize) << where;
    EXPECT_TRUE(torch::equal(got.codes, want.codes)) << where << ": codes";
    EXPECT_TRUE(torch::equal(got.absmax, want.absmax)) << where << ": absmax";
    EXPECT_TRUE(torch::equal(got.code.cpu(), want.code.cpu())) << where << ": code table";
    ASSERT_EQ(got.nested, want.nested) << where;
    if (!want.nested) return;
    EXPECT_TRUE(torch::equal(got.nested_absmax, want.nested_absmax)) << where << ": nested absmax";
    EXPECT_EQ(got.nested_offset, want.nested_offset) << where << ": offset";
    EXPECT_TRUE(torch::equal(got.nested_code, want.nested_code)) << where << ": nested code";
  }

  static std::string root_;
};
std::string ShardedBaseTest::root_;

}  // namespace

TEST_F(ShardedBaseTest, GatheredWeightsEqualTheUnshardedQuantizationBitForBit) {
  struct Case {
    std::string dir;
    quant::QuantConfig quant;
  };
  const std::vector<Case> cases = {{"float", {kernels::QuantType::NF4, 64, true}},
                                   {"float", {kernels::QuantType::NF4, 64, false}},
                                   {"float", {kernels::QuantType::FP4, 256, true}},
                                   {"nf4", {}},
                                   {"fp4-128", {}}};
  for (const Case& c : cases) {
    nn::ModelOptions options;
    options.quant = c.quant;
    const auto whole = load(c.dir, options, false), sharded = load(c.dir, options, true);
    ASSERT_EQ(sharded->linears().size(), whole->linears().size());
    for (size_t i = 0; i < whole->linears().size(); ++i) {
      EXPECT_EQ(dynamic_cast<const nn::Linear4bit*>(&sharded->linears()[i].second->base()), nullptr) << "held whole";
      expect_bit_equal(state_of(sharded, i), state_of(whole, i),
                       c.dir + " blocksize " + std::to_string(c.quant.blocksize) + " " + whole->linears()[i].first);
    }
  }
}

TEST_F(ShardedBaseTest, EachRankHoldsItsShareOfTheBase) {
  const int world = comm().world_size();
  auto model = load("float", {}, true);
  const nn::ShardedBase& base = *model->sharded_base();
  // Per layer at most one unit (64 x 256 elements: 8192 code bytes, 256 absmax, 1 float) of padding.
  const int64_t unit_bytes = 8192 + 256 + 4, layers = spec().layers;
  const int64_t share = (base.full_bytes() + world - 1) / world;
  EXPECT_LE(base.local_bytes(), share + layers * unit_bytes);
  EXPECT_LT(base.local_bytes(), base.full_bytes());
  auto total = torch::tensor({base.local_bytes()}, torch::kInt64);
  comm().allreduce(total);
  EXPECT_GE(total.item<int64_t>(), base.full_bytes()) << "every byte is held by some rank";
  EXPECT_LE(total.item<int64_t>(), base.full_bytes() + world * layers * unit_bytes);
  // The unsharded model's 4-bit bytes, counted from its tensors.
  const auto whole = load("float", {}, false);
  int64_t whole_bytes = 0;
  for (size_t i = 0; i < whole->linears().size(); ++i) {
    const auto& state = state_of(whole, i);
    whole_bytes += state.codes.nbytes() + state.absmax.nbytes() + state.nested_absmax.nbytes();
  }
  EXPECT_EQ(base.full_bytes(), whole_bytes);
  // Two layers' worth of gather buffers, once something ran.
  model->forward(torch::zeros({1, 2}, torch::kInt64));
  EXPECT_EQ(base.buffer_bytes(), 2 * world * (base.local_bytes() / layers));
}

TEST_F(ShardedBaseTest, ForwardAndBackwardEqualTheUnshardedModel) {
  const int64_t layers = spec().layers;
  for (const auto& [dir, checkpointing] : {std::pair{"float", false}, std::pair{"float", true}, std::pair{"phi3", true}}) {
    nn::ModelOptions options;
    options.activation_checkpointing = checkpointing;
    auto whole = load(dir, options, false), sharded = load(dir, options, true);
    const torch::Tensor ids = torch::randint(0, 259, {2, 9}, at::detail::createCPUGenerator(3));
    for (int step = 0; step < 3; ++step) {
      std::vector<torch::Tensor> logits;
      for (auto* model : {&whole, &sharded}) {
        (*model)->train();
        (*model)->zero_grad();
        logits.push_back((*model)->forward(ids));
        logits.back().pow(2).mean().backward();
      }
      EXPECT_TRUE(torch::equal(logits[1], logits[0])) << "logits, checkpointing " << checkpointing << " step " << step;
      const auto want = whole->parameters(), got = sharded->parameters();
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_TRUE(torch::equal(got[i].grad(), want[i].grad())) << "gradient " << i << " step " << step;
      }
    }
  }
}

TEST_F(ShardedBaseTest, PrefetchKeepsTwoLayersResidentAcrossTheTurn) {
  // Forward walks 0..L-1 prefetching one ahead, backward L-1..0; two buffers hold the layers
  // at each turn, so a first step gathers 2L-2 layers and every later one 2L-4. An eval
  // forward (no backward follows) prefetches layer 0 for the next forward after the last
  // layer: after training it finds layers 0 and 1 resident (L-1 gathers), then needs all L.
  const int64_t layers = spec().layers;
  for (bool checkpointing : {false, true}) {
    nn::ModelOptions options;
    options.activation_checkpointing = checkpointing;
    auto model = load("float", options, true);
    const nn::ShardedBase& base = *model->sharded_base();
    const torch::Tensor ids = torch::randint(0, 259, {1, 5}, at::detail::createCPUGenerator(4));
    model->train();
    for (int step = 0; step < 3; ++step) {
      const int64_t before = base.layers_gathered();
      model->forward(ids).sum().backward();
      EXPECT_EQ(base.layers_gathered() - before, step == 0 ? 2 * layers - 2 : 2 * layers - 4)
          << "step " << step << ", checkpointing " << checkpointing;
    }
    model->eval();
    torch::NoGradGuard no_grad;
    for (int pass = 0; pass < 2; ++pass) {
      const int64_t before = base.layers_gathered();
      model->forward(ids);
      EXPECT_EQ(base.layers_gathered() - before, pass == 0 ? layers - 1 : layers) << "eval pass " << pass;
    }
  }
}
