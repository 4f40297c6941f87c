// `shardlora init-model`: a complete, loadable HF directory with a byte-level tokenizer,
// reproducible from its seed, never clobbering an existing directory.
#include <gtest/gtest.h>

#include <filesystem>

#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/nn/hf_loader.h"
#include "shardlora_paths.h"
#include "subprocess.h"
#include "temp_dir.h"

using namespace shardlora;
using namespace shardlora::testing;
namespace fs = std::filesystem;

namespace {

class InitModel : public TempDirTest {
 protected:
  ProcessResult init_model(std::vector<std::string> args) {
    args.insert(args.begin(), {shardlora_binary(), "init-model"});
    return run_process(args, 60.0);
  }
};

}  // namespace

TEST_F(InitModel, WritesACompleteLoadableDirectory) {
  const auto result = init_model({path("tiny"), "--seed", "3"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  for (const char* file : {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}) {
    EXPECT_TRUE(fs::exists(path("tiny/") + file)) << file;
  }
  auto model = nn::load_hf_model(path("tiny"), {});
  EXPECT_EQ(model->config().vocab_size, 259);
  const torch::Tensor logits = model->forward(torch::tensor({{256, 72, 105}}));
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{1, 3, 259}));

  const auto tokenizer = io::read_json_file(path("tiny/tokenizer.json"));
  const auto& vocab = tokenizer["model"]["vocab"];
  EXPECT_EQ(vocab.size(), 256u);
  // GPT-2's byte-to-unicode mapping: printable bytes keep their character, others move up.
  EXPECT_EQ(vocab["!"], 33);
  EXPECT_EQ(vocab["\xc4\xa0"], 32) << "space is U+0120";
  EXPECT_EQ(vocab["\xc4\x80"], 0) << "byte 0 is U+0100";
  EXPECT_EQ(vocab["\xc3\xbf"], 255);
  EXPECT_EQ(tokenizer["added_tokens"][1]["content"], "</s>");
  EXPECT_EQ(tokenizer["added_tokens"][1]["id"], 257);
  EXPECT_EQ(io::read_json_file(path("tiny/generation_config.json"))["eos_token_id"], 257);
}

TEST_F(InitModel, SameSeedSameFilesExistingDirectoryNeedsForce) {
  ASSERT_EQ(init_model({path("a"), "--seed", "5"}).exit_code, 0);
  ASSERT_EQ(init_model({path("b"), "--seed", "5"}).exit_code, 0);
  EXPECT_EQ(read_file(path("a/model.safetensors")), read_file(path("b/model.safetensors")));
  ASSERT_EQ(init_model({path("c"), "--seed", "6"}).exit_code, 0);
  EXPECT_NE(read_file(path("a/model.safetensors")), read_file(path("c/model.safetensors")));
  const auto refused = init_model({path("a"), "--seed", "6"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("already exists (pass --force"), std::string::npos) << refused.err;
  EXPECT_EQ(init_model({path("a"), "--seed", "6", "--force"}).exit_code, 0);
  EXPECT_EQ(read_file(path("a/model.safetensors")), read_file(path("c/model.safetensors")));
  const auto small_vocab = init_model({path("d"), "--vocab", "100"});
  EXPECT_EQ(small_vocab.exit_code, 1);
  EXPECT_NE(small_vocab.err.find("--vocab 100"), std::string::npos) << small_vocab.err;
  EXPECT_FALSE(fs::exists(path("d")));
}
