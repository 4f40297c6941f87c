// data.template: auto finds the model's template where transformers looks for it; its
// assistant turns, and only they, are trained on; templates whose turns cannot be found are
// refused with the template named; custom templates come from the recipe's keys.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "shardlora/data/chat_template.h"
#include "shardlora/data/dataset.h"
#include "shardlora/data/example.h"
#include "shardlora/data/tokenizer.h"
#include "shardlora/kernels/check.h"
#include "shardlora/nn/random_model.h"
#include "shardlora/train/from_recipe.h"
#include "temp_dir.h"

using namespace shardlora;
using namespace shardlora::data;

namespace {

// Phi-4's turns.
constexpr const char* kPhi4 =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}";

const std::vector<Message> kConversation = {{"user", "2+2?"}, {"assistant", "4"}, {"user", "3+3?"}, {"assistant", "six"}};

class ChatTemplates : public shardlora::testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    nn::write_random_hf_model(path("model"), {});
    tokenizer_ = load_tokenizer(path("model"));
  }

  void set_config_template(const nlohmann::json& chat_template) {
    nlohmann::json config = nlohmann::json::parse(shardlora::testing::read_file(path("model/tokenizer_config.json")));
    config["chat_template"] = chat_template;
    std::ofstream(path("model/tokenizer_config.json")) << config.dump();
  }

  std::string render_auto(const std::vector<Message>& messages) {
    std::string text;
    for (const Segment& s : render_chat(resolve_chat_template("auto", path("model"), *tokenizer_), messages)) text += s.text;
    return text;
  }

  std::unique_ptr<Tokenizer> tokenizer_;
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_F(ChatTemplates, TheModelsTemplateIsFoundWhereTransformersLooks) {
  EXPECT_FALSE(model_chat_template(path("model"), *tokenizer_));
  EXPECT_EQ(resolve_chat_template("auto", path("model"), *tokenizer_).name, "chatml") << "no template of its own";

  set_config_template(kPhi4);
  const auto own = model_chat_template(path("model"), *tokenizer_);
  ASSERT_TRUE(own && own->jinja);
  EXPECT_EQ(own->bos_token, "<s>");
  EXPECT_EQ(own->eos_token, "</s>");
  EXPECT_EQ(render_auto({{"user", "hi"}, {"assistant", "yo"}}), "<|im_start|>user<|im_sep|>hi<|im_end|><|im_start|>assistant<|im_sep|>yo<|im_end|>");

  set_config_template(nlohmann::json::array({{{"name", "tool_use"}, {"template", "TOOLS"}}, {{"name", "default"}, {"template", kPhi4}}}));
  EXPECT_EQ(render_auto({{"user", "a"}, {"assistant", "b"}}), "<|im_start|>user<|im_sep|>a<|im_end|><|im_start|>assistant<|im_sep|>b<|im_end|>");
  set_config_template(nlohmann::json::array({{{"name", "tool_use"}, {"template", "TOOLS"}}}));
  EXPECT_NE(error_of([&] { model_chat_template(path("model"), *tokenizer_); }).find("tokenizer_config.json: key 'chat_template' is a list without a 'default'"),
            std::string::npos);

  // chat_template.json, then chat_template.jinja, come before tokenizer_config.json.
  std::ofstream(path("model/chat_template.json")) << nlohmann::json({{"chat_template", "{% for m in messages %}[{{ m.content }}</s>]{% endfor %}"}}).dump();
  EXPECT_EQ(render_auto({{"user", "a"}, {"assistant", "b"}}), "[a</s>][b</s>]");
  std::ofstream(path("model/chat_template.jinja")) << "{% for m in messages %}\n  <{{ m.content }}</s>>\n{% endfor %}\n";
  EXPECT_EQ(render_auto({{"user", "a"}, {"assistant", "b"}}), "  <a</s>>\n  <b</s>>\n");
  std::ofstream(path("model/chat_template.jinja")) << "{% for m in messages %}\n{{ m.content + }}\n{% endfor %}";
  EXPECT_NE(error_of([&] { model_chat_template(path("model"), *tokenizer_); }).find("model/chat_template.jinja:2:16: expected an expression"),
            std::string::npos)
      << error_of([&] { model_chat_template(path("model"), *tokenizer_); });
}

TEST_F(ChatTemplates, OnlyTheAssistantTurnsAreTrainedOn) {
  set_config_template(kPhi4);
  const ChatTemplate chat = resolve_chat_template("auto", path("model"), *tokenizer_);
  const Example example = tokenize_segments(*tokenizer_, render_chat(chat, kConversation), /*train_on_prompt=*/false);
  std::vector<int64_t> trained, all;
  for (size_t i = 0; i < example.input_ids.size(); ++i) {
    if (example.labels[i] != kIgnoreIndex) trained.push_back(example.labels[i]);
    EXPECT_TRUE(example.labels[i] == kIgnoreIndex || example.labels[i] == example.input_ids[i]);
  }
  EXPECT_EQ(tokenizer_->decode(trained), "4<|im_end|>six<|im_end|>");
  EXPECT_EQ(tokenizer_->decode(example.input_ids),
            "<|im_start|>user<|im_sep|>2+2?<|im_end|><|im_start|>assistant<|im_sep|>4<|im_end|>"
            "<|im_start|>user<|im_sep|>3+3?<|im_end|><|im_start|>assistant<|im_sep|>six<|im_end|>");
  // The prompt a model answers, as the template's generation prompt.
  std::string prompt;
  for (const Segment& s : render_generation_prompt(chat, {{"user", "2+2?"}})) prompt += s.text;
  EXPECT_EQ(prompt, "<|im_start|>user<|im_sep|>2+2?<|im_end|><|im_start|>assistant<|im_sep|>");
}

TEST_F(ChatTemplates, TemplatesWhoseTurnsCannotBeFoundAreRefusedByName) {
  // The last user turn rendered differently once an answer follows: no stable prefix.
  set_config_template("{% for m in messages %}{% if loop.last and add_generation_prompt %}LAST {% endif %}{{ m.content }}</s>{% endfor %}");
  EXPECT_NE(error_of([&] { render_auto(kConversation); })
                .find("tokenizer_config.json: cannot find assistant message 1 in the render: the messages before it, with the "
                      "generation prompt, do not render as the start of the whole conversation"),
            std::string::npos)
      << error_of([&] { render_auto(kConversation); });
  // Nothing after the answer: the model would never learn to stop.
  set_config_template("{% for m in messages %}{{ m.role }}: {{ m.content }}{% endfor %}");
  EXPECT_NE(error_of([&] { render_auto(kConversation); }).find("so the model would never learn to stop"), std::string::npos);
  // A template that rewrites the answer.
  set_config_template("{% for m in messages %}{{ m.content | upper }}</s>{% endfor %}");
  EXPECT_NE(error_of([&] { render_auto(kConversation); }).find("does not write the message's content as given"), std::string::npos);
  set_config_template("{% for m in messages %}{{ m.content }}</s>{% endfor %}");
  EXPECT_NE(error_of([&] { render_auto({{"user", "only a question"}}); }).find("no assistant message to train on"), std::string::npos);
  EXPECT_NE(error_of([&] { resolve_chat_template("vicuna", path("model"), *tokenizer_); }).find("unknown chat template 'vicuna' (auto, "),
            std::string::npos);
}

// A record's tools and a message's other keys (tool_calls, reasoning_content) reach the
// template as transformers passes them; a turn of calls only (content null) is trained on.
TEST_F(ChatTemplates, ToolsAndToolCallsReachTheTemplateFromTheDataset) {
  set_config_template(
      "{% if tools %}[tools: {{ tools | map(attribute='function.name') | join(',') }}]{% endif %}"
      "{% for m in messages %}<{{ m.role }}>{% if m.content is not none %}{{ m.content }}{% endif %}"
      "{% for call in m.tool_calls | default([]) %}<call>{{ call.function.name }}({{ call.function.arguments | tojson }})</call>{% endfor %}"
      "{% if m.reasoning_content is defined %}(thought: {{ m.reasoning_content }}){% endif %}</s>{% endfor %}");
  std::ofstream(path("tools.jsonl"))
      << R"({"tools": [{"type": "function", "function": {"name": "get_weather"}}], "messages": [)"
      << R"({"role": "user", "content": "Oslo?"},)"
      << R"({"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}}]},)"
      << R"({"role": "tool", "content": "21"},)"
      << R"({"role": "assistant", "content": "21 C.", "reasoning_content": "read it"}]})" << "\n";
  DatasetOptions options;
  options.path = path("tools.jsonl");
  const Dataset dataset(options);
  const ChatTemplate chat = resolve_chat_template("auto", path("model"), *tokenizer_);
  const Example example = dataset.example(0, *tokenizer_, {&chat, false, SIZE_MAX});
  EXPECT_EQ(tokenizer_->decode(example.input_ids),
            "[tools: get_weather]<user>Oslo?</s><assistant><call>get_weather({\"city\": \"Oslo\", \"unit\": \"c\"})</call></s>"
            "<tool>21</s><assistant>21 C.(thought: read it)</s>");
  std::vector<int64_t> trained;
  for (const int64_t label : example.labels) {
    if (label != kIgnoreIndex) trained.push_back(label);
  }
  // The template has no generation prompt: the model writes the <assistant> header itself.
  EXPECT_EQ(tokenizer_->decode(trained),
            "<assistant><call>get_weather({\"city\": \"Oslo\", \"unit\": \"c\"})</call></s><assistant>21 C.(thought: read it)</s>");
}

TEST_F(ChatTemplates, CustomTemplateComesFromTheRecipesKeys) {
  const train::Recipe recipe = train::Recipe::parse(
      "model:\n  path: m\ndata:\n  train: d.jsonl\n  template: custom\n  custom_template:\n    user_prefix: \"Q: \"\n"
      "    user_suffix: \"\\n\"\n    assistant_prefix: \"A: \"\n    assistant_suffix: \"</s>\"\noutput:\n  dir: out\n",
      "recipe.yaml");
  std::string text;
  for (const auto& segment : render_chat(train::chat_template_from(recipe, path("model"), *tokenizer_), {{"user", "2+2?"}, {"assistant", "4"}})) {
    text += segment.text;
  }
  EXPECT_EQ(text, "Q: 2+2?\nA: 4</s>");
}
