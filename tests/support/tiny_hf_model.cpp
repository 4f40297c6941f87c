#include "tiny_hf_model.h"

#include <fstream>

#include "shardlora/nn/random_model.h"

namespace shardlora::testing {

std::map<std::string, torch::Tensor> write_tiny_hf_model(const std::string& dir, const TinyModelOptions& options) {
  const int64_t heads = 4;
  nn::RandomModelSpec spec{.vocab = options.vocab, .hidden = options.hidden, .intermediate = options.intermediate,
                           .layers = options.layers, .heads = heads, .kv_heads = options.kv_hidden / (options.hidden / heads),
                           .dtype = options.dtype, .seed = options.seed, .sharded = options.sharded, .tokenizer = false};
  auto tensors = nn::write_random_hf_model(dir, spec);
  std::ofstream(dir + "/tokenizer.json") << R"({"version": "1.0", "model": {"type": "BPE"}})";  // a file to copy
  return tensors;
}

}  // namespace shardlora::testing
