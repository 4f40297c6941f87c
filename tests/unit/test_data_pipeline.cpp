// Chat templates render the documented strings; prompt tokens are masked and labels line up
// with the tokens; packing keeps examples whole and the model's mask keeps them apart (a
// packed example's logits equal its logits alone); the sampler covers every sample exactly
// once per epoch across 1-4 ranks and resumes to the identical sequence.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "random_llama.h"
#include "shardlora/data/example.h"
#include "shardlora/data/sampler.h"
#include "shardlora/kernels/check.h"
#include "shardlora/nn/random_model.h"
#include "temp_dir.h"

using namespace shardlora;
using namespace shardlora::data;

namespace {

std::string joined(const std::vector<Segment>& segments) {
  std::string text;
  for (const auto& segment : segments) text += segment.text;
  return text;
}

const std::vector<Message> kConversation = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye"}, {"assistant", "Bye!"}};

class DataPipeline : public shardlora::testing::TempDirTest {
 protected:
  std::unique_ptr<Tokenizer> byte_tokenizer() {
    nn::write_random_hf_model(path("model"), {});
    return load_tokenizer(path("model"));
  }
};

}  // namespace

TEST(ChatTemplates, RenderTheDocumentedFormats) {
  EXPECT_EQ(joined(render_chat(builtin_chat_template("llama-3"), kConversation)),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nBye!<|eot_id|>");
  EXPECT_EQ(joined(render_chat(builtin_chat_template("chatml"), kConversation)),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
            "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nBye!<|im_end|>\n");
  EXPECT_EQ(joined(render_chat(builtin_chat_template("mistral"), kConversation)),
            "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] Bye [/INST]Bye!</s>");
  EXPECT_EQ(joined(render_chat(builtin_chat_template("llama-2"), kConversation)),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s>[INST] Bye [/INST] Bye! </s>");
  const auto alpaca = render_chat(builtin_chat_template("alpaca"), {{"user", "Add 2 and 2."}, {"assistant", "4"}});
  EXPECT_EQ(joined(alpaca),
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\nAdd 2 and 2.\n\n### Response:\n4</s>");
  // Only the assistant's content and closing suffix are trainable.
  std::string trained;
  for (const auto& segment : render_chat(builtin_chat_template("chatml"), kConversation)) {
    if (segment.trainable) trained += segment.text;
  }
  EXPECT_EQ(trained, "Hello!<|im_end|>\nBye!<|im_end|>\n");
  EXPECT_THROW(builtin_chat_template("vicuna"), Error);
  EXPECT_THROW(render_chat(builtin_chat_template("chatml"), {{"user", "only a question"}}), Error);
  EXPECT_THROW(render_chat(builtin_chat_template("mistral"), {{"tool", "x"}, {"assistant", "y"}}), Error);
}

TEST(ChatTemplates, GenerationPromptEndsWithTheAssistantPrefix) {
  const std::vector<Message> question = {{"system", "Be brief."}, {"user", "Hi"}};
  std::string text;
  for (const auto& segment : render_generation_prompt(builtin_chat_template("chatml"), question)) {
    EXPECT_FALSE(segment.trainable);
    text += segment.text;
  }
  EXPECT_EQ(text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // The prompt of a conversation is exactly the rendered conversation up to its answer.
  const std::string full = joined(render_chat(builtin_chat_template("llama-3"), kConversation));
  std::string prompt;
  for (const auto& segment : render_generation_prompt(builtin_chat_template("llama-3"), {kConversation.begin(), kConversation.end() - 1})) {
    prompt += segment.text;
  }
  EXPECT_EQ(full.substr(0, prompt.size()), prompt);
  EXPECT_EQ(full.substr(prompt.size()), "Bye!<|eot_id|>");
}

TEST_F(DataPipeline, PromptTokensAreMaskedAndLabelsLineUp) {
  const auto tokenizer = byte_tokenizer();
  const auto segments = render_chat(builtin_chat_template("chatml"), {{"user", "Hi"}, {"assistant", "Yo"}});
  const Example example = tokenize_segments(*tokenizer, segments);
  const std::string prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", answer = "Yo<|im_end|>\n";
  ASSERT_EQ(example.input_ids.size(), prompt.size() + answer.size());  // one byte, one token
  for (size_t i = 0; i < example.input_ids.size(); ++i) {
    const auto byte = static_cast<unsigned char>((prompt + answer)[i]);
    EXPECT_EQ(example.input_ids[i], byte) << i;
    EXPECT_EQ(example.labels[i], i < prompt.size() ? kIgnoreIndex : int64_t{byte}) << i;
  }
  EXPECT_EQ(example.trainable_tokens(), static_cast<int64_t>(answer.size()));
  EXPECT_EQ(tokenize_segments(*tokenizer, segments, /*train_on_prompt=*/true).trainable_tokens(),
            static_cast<int64_t>(example.input_ids.size()));
  // Plain text: the text and eos, all trained on.
  const Example text = tokenize_text(*tokenizer, "ab");
  EXPECT_EQ(text.input_ids, (std::vector<int64_t>{'a', 'b', nn::kByteVocab + 1}));
  EXPECT_EQ(text.labels, text.input_ids);
}

TEST_F(DataPipeline, LengthPolicyAndPadding) {
  Example long_example{{1, 2, 3, 4, 5}, {1, 2, 3, 4, 5}};
  Example dropped = long_example;
  EXPECT_FALSE(fit_to_length(&dropped, 4, OverLength::Drop));
  EXPECT_TRUE(fit_to_length(&long_example, 4, OverLength::Truncate));
  EXPECT_EQ(long_example.input_ids, (std::vector<int64_t>{1, 2, 3, 4}));
  const Batch batch = pad_batch({{{7, 8, 9}, {kIgnoreIndex, 8, 9}}, {{5}, {5}}}, 0);
  EXPECT_TRUE(torch::equal(batch.input_ids, torch::tensor(std::vector<int64_t>{7, 8, 9, 5, 0, 0}).view({2, 3})));
  EXPECT_TRUE(torch::equal(batch.labels, torch::tensor(std::vector<int64_t>{kIgnoreIndex, 8, 9, 5, kIgnoreIndex, kIgnoreIndex}).view({2, 3})));
  EXPECT_EQ(batch.trainable_tokens, 3);
}

TEST_F(DataPipeline, PackingKeepsExamplesWholeAndApart) {
  // Lengths 5, 4, 3, 6, 2 into rows of 10: [5 4] [3 6] [2].
  std::vector<Example> examples;
  torch::manual_seed(3);
  for (const int64_t length : {5, 4, 3, 6, 2}) {
    const torch::Tensor ids = torch::randint(40, {length}, torch::kInt64);
    std::vector<int64_t> values(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + length);
    examples.push_back({values, values});
  }
  const Batch batch = pack_batch(examples, 10, 0);
  ASSERT_EQ(batch.input_ids.sizes(), (std::vector<int64_t>{3, 10}));
  EXPECT_TRUE(torch::equal(batch.document_ids[0], torch::tensor(std::vector<int64_t>{0, 0, 0, 0, 0, 1, 1, 1, 1, -1})));
  EXPECT_TRUE(torch::equal(batch.position_ids[1].narrow(0, 0, 9), torch::tensor(std::vector<int64_t>{0, 1, 2, 0, 1, 2, 3, 4, 5})));
  EXPECT_EQ(batch.trainable_tokens, 20);
  EXPECT_THROW(pack_batch({{std::vector<int64_t>(11, 1), std::vector<int64_t>(11, 1)}}, 10, 0), Error);

  // The model's mask: each packed example's logits equal its logits computed alone.
  const auto config = shardlora::testing::tiny_config("llama");
  const auto weights = shardlora::testing::random_weights(config, 4);
  nn::ModelOptions options;
  options.compute_dtype = torch::kFloat32;
  nn::LlamaModel model(config, shardlora::testing::lookup_in(weights), options, "test");
  torch::NoGradGuard no_grad;
  const torch::Tensor packed =
      model->forward(batch.input_ids, {.position_ids = batch.position_ids, .document_ids = batch.document_ids});
  int64_t row = 0, column = 0;
  for (const Example& example : examples) {
    const auto length = static_cast<int64_t>(example.input_ids.size());
    if (column + length > 10) {
      ++row;
      column = 0;
    }
    const torch::Tensor alone = model->forward(torch::tensor(example.input_ids).view({1, -1}));
    EXPECT_TRUE(torch::allclose(packed[row].narrow(0, column, length), alone[0], 1e-5, 1e-5)) << "row " << row;
    column += length;
  }
}

TEST(Sampler, EverySampleOncePerEpochAcrossRanks) {
  for (const int64_t world : {1, 2, 3, 4}) {
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
      std::multiset<int64_t> seen;
      for (int64_t rank = 0; rank < world; ++rank) {
        ShardedSampler sampler(103, world, rank, 42);
        const auto samples = sampler.epoch_samples(epoch);
        EXPECT_LE(std::abs(static_cast<int64_t>(samples.size()) - 103 / world), 1);
        seen.insert(samples.begin(), samples.end());
      }
      ASSERT_EQ(seen.size(), 103u) << "world " << world;
      for (int64_t i = 0; i < 103; ++i) EXPECT_EQ(seen.count(i), 1u) << "sample " << i << ", world " << world;
    }
  }
  ShardedSampler sampler(103, 1, 0, 42);
  EXPECT_NE(sampler.epoch_samples(0), sampler.epoch_samples(1)) << "each epoch reshuffles";
  EXPECT_NE(sampler.epoch_samples(0), ShardedSampler(103, 1, 0, 43).epoch_samples(0)) << "the seed matters";
  EXPECT_EQ(ShardedSampler(5, 1, 0, 1, /*shuffle=*/false).epoch_samples(0), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_THROW(ShardedSampler(3, 4, 0, 1), Error);
}

TEST(Sampler, ResumesToTheIdenticalSequence) {
  ShardedSampler straight(37, 3, 1, 7);
  std::vector<int64_t> expected;
  for (int i = 0; i < 40; ++i) expected.push_back(straight.next());  // crosses three epochs
  ShardedSampler first(37, 3, 1, 7);
  std::vector<int64_t> resumed;
  for (int i = 0; i < 17; ++i) resumed.push_back(first.next());
  ShardedSampler second(37, 3, 1, 7);
  second.restore(first.position());
  for (int i = 17; i < 40; ++i) resumed.push_back(second.next());
  EXPECT_EQ(resumed, expected);
  EXPECT_THROW(second.restore({0, 100}), Error);
}
