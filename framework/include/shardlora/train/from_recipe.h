// The framework's option structs filled in from a recipe, so that train, eval, estimate and
// the demo read each key in one place.
#pragma once

#include <cstdint>
#include <string>

#include "shardlora/data/chat_template.h"
#include "shardlora/data/data_loader.h"
#include "shardlora/data/dataset.h"
#include "shardlora/nn/llama.h"
#include "shardlora/optim/adamw.h"
#include "shardlora/train/recipe.h"

namespace shardlora::train {

// data.template: auto (the own template of the model in `model_dir`), a built-in, or custom
// from the data.custom_template strings.
data::ChatTemplate chat_template_from(const Recipe& recipe, const std::string& model_dir, const data::Tokenizer& tokenizer);

// The dataset at `path` with data.format and data.fields.
data::DatasetOptions dataset_options_from(const Recipe& recipe, const std::string& path);

// Batching, length policy, error policy and prompt masking; `chat_template` must outlive the loader.
data::LoaderOptions loader_options_from(const Recipe& recipe, const data::ChatTemplate* chat_template);

nn::ModelOptions model_options_from(const Recipe& recipe);

// The schedule runs over `total_steps`.
// The optimizer section for `model`'s parameters (in model->parameters() order: LoRA+ rates).
optim::AdamWOptions adamw_options_from(const Recipe& recipe, int64_t total_steps, const nn::LlamaModel& model);
optim::LrSchedule lr_schedule_from(const Recipe& recipe, int64_t total_steps);

}  // namespace shardlora::train
