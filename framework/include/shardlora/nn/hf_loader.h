// Loads a Llama-family model from a Hugging Face directory: config.json, model.safetensors
// or a sharded index. Float Linear weights of the decoder blocks are quantized on load, one
// tensor at a time from the memory map (peak host memory: the 4-bit model plus one float
// tensor); directories already in bitsandbytes' 4-bit layout load without re-quantizing.
// Tensors the model does not use are an error naming them, as are missing ones.
#pragma once

#include <string>

#include "shardlora/nn/llama.h"

namespace shardlora::nn {

LlamaModel load_hf_model(const std::string& dir, const ModelOptions& options);

// The errors load_hf_model would give for the directory's config and tensor names, shapes
// and dtypes, without reading the weights (built on the meta device): what quantize and
// merge check before they write anything.
void check_hf_model(const std::string& dir);

}  // namespace shardlora::nn
