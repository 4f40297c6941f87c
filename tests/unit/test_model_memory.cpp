// Memory of a QLoRA model, measured: after a training step (forward + backward) the heap
// holds the model's own tensors and the adapters' gradients, and no float copy of any base
// weight; the Linear storage is 4.127 bits per parameter (NF4, double quant, blocksize 64).
#include <gtest/gtest.h>
#include <malloc.h>
#include <torch/torch.h>

#include "random_llama.h"

using namespace shardlora;
using namespace shardlora::nn;
using namespace shardlora::testing;

namespace {

// Bytes of heap in use (glibc arenas plus mmapped blocks): libtorch's CPU allocator returns
// every tensor to malloc, so this counts live tensors.
int64_t heap_in_use() {
  malloc_trim(0);
  const auto info = mallinfo2();
  return static_cast<int64_t>(info.uordblks + info.hblkhd);
}

LlamaConfig memory_config() {
  return parse_llama_config({{"model_type", "llama"}, {"vocab_size", 64}, {"hidden_size", 256}, {"intermediate_size", 1024},
                             {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 4}},
                            "test");
}

}  // namespace

TEST(ModelMemory, NoFloatCopyOfABaseWeightOutlivesATrainingStep) {
  const LlamaConfig config = memory_config();
  const Weights weights = random_weights(config, 3);
  ModelOptions options;
  options.compute_dtype = torch::kFloat32;
  options.lora = {.r = 4, .alpha = 8};
  const torch::Tensor ids = torch::randint(config.vocab_size, {2, 16}, torch::kInt64);
  const auto training_step = [&] {
    LlamaModel model(config, lookup_in(weights), options, "test");
    model->train();
    torch::nn::functional::cross_entropy(model->forward(ids).view({-1, config.vocab_size}), ids.view({-1})).backward();
    return model;
  };
  // libtorch 2.x keeps caches from its first training step (139 MB on a 16-core GPU box):
  // one step taken and dropped first, so only what the model keeps is measured.
  training_step();
  for (const bool checkpointing : {false, true}) {
    options.activation_checkpointing = checkpointing;
    const int64_t before = heap_in_use();
    LlamaModel model = training_step();
    const int64_t grown = heap_in_use() - before;

    // What the model is supposed to hold: 4-bit Linear states, frozen float tensors, adapters and their gradients.
    int64_t expected = 0, smallest_float_weight = INT64_MAX, linear_params = 0, codes_and_scales = 0;
    for (const auto& [name, linear] : model->linears()) {
      const auto& state = dynamic_cast<const Linear4bit&>(linear->base()).state();
      expected += state.storage_bytes();
      codes_and_scales += state.codes.nbytes() + state.absmax.nbytes() + state.nested_absmax.nbytes();
      linear_params += state.numel();
      smallest_float_weight = std::min(smallest_float_weight, state.numel() * 4);
    }
    for (const auto& parameter : model->parameters()) expected += 2 * parameter.nbytes();  // value + gradient
    expected += (config.vocab_size * 2 + 3 * config.num_hidden_layers + 1) * config.hidden_size * 4;  // embed, lm_head, norms
    EXPECT_LT(grown, expected + smallest_float_weight / 2)
        << "checkpointing " << checkpointing << ": heap grew " << grown << " bytes, the model accounts for " << expected;
    EXPECT_NEAR(8.0 * codes_and_scales / linear_params, 4.127, 0.001);
  }
}
