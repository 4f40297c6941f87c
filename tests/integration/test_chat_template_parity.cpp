// Our Jinja renderer on real chat templates (tests/data/chat_templates: Qwen3, Gemma 3,
// Llama 3.1, DeepSeek-V3, Phi-4, SmolLM2, Mistral v0.3's shape, a {% generation %} template)
// against the two renderers Hugging Face runs them with, on varied conversations (system or
// not, several turns, reasoning blocks, tools, code and Unicode, roles out of order):
//   - Jinja2 in the environment transformers' apply_chat_template builds (sandboxed,
//     trim_blocks, lstrip_blocks, loop controls, its tojson / raise_exception / strftime_now
//     and the generation tag), from Debian's python3-jinja2 (scripts/setup installs it);
//   - @huggingface/jinja (npm), the renderer of Hugging Face's JS libraries, when
//     SHARDLORA_NODE_MODULES names a node_modules holding it.
// Renders (or the fact that the template raises) must be equal, generation spans equal
// Jinja2's, and render_chat must find each assistant turn: the segments join to the whole
// render, each trainable one holds its answer and ends with the model's eos text, and no
// prompt segment holds an answer. Each reference skips visibly when absent.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>

#include "shardlora/data/chat_template.h"
#include "shardlora/kernels/check.h"
#include "subprocess.h"
#include "temp_dir.h"

using namespace shardlora;
using namespace shardlora::testing;
namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

namespace {

constexpr const char* kJinja2Script = R"PY(
import json, sys
from datetime import datetime
import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

BEGIN, END = "\ue000", "\ue001"

class Generation(Extension):
    # transformers' AssistantTracker records where {% generation %} output lands; here the
    # output is fenced and the fences turned into byte offsets afterwards.
    tags = {"generation"}
    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_fence"), [], [], body).set_lineno(lineno)
    def _fence(self, caller):
        return BEGIN + caller() + END

def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = lambda format: datetime.now().strftime(format)

out = []
for case in json.load(open(sys.argv[1], encoding="utf-8")):
    try:
        fenced = env.from_string(case["template"]).render(**case["context"])
    except Exception as error:
        out.append({"error": type(error).__name__ + ": " + str(error)})
        continue
    text, spans, begin = [], [], 0
    size = 0
    for ch in fenced:
        if ch == BEGIN:
            begin = size
        elif ch == END:
            spans.append([begin, size])
        else:
            text.append(ch)
            size += len(ch.encode("utf-8"))
    out.append({"text": "".join(text), "spans": spans})
sys.stdout.write(json.dumps(out, ensure_ascii=False))
)PY";

constexpr const char* kHuggingFaceJsScript = R"JS(
const { Template } = require("@huggingface/jinja");
const fs = require("fs");
const out = JSON.parse(fs.readFileSync(process.argv[2], "utf8")).map((c) => {
  try {
    return { text: new Template(c.template).render(c.context) };
  } catch (error) {
    return { error: String(error && error.message ? error.message : error) };
  }
});
process.stdout.write(JSON.stringify(out));
)JS";

struct ModelTemplate {
  std::string file;
  std::optional<std::string> bos, eos;
};

const std::vector<ModelTemplate> kTemplates = {
    {"qwen3.jinja", std::nullopt, "<|im_end|>"},
    {"gemma3.jinja", "<bos>", "<end_of_turn>"},
    {"llama3_1.jinja", "<|begin_of_text|>", "<|eot_id|>"},
    {"deepseek_v3.jinja", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"},
    {"phi4.jinja", "<|endoftext|>", "<|im_end|>"},
    {"smollm2.jinja", "<|im_start|>", "<|im_end|>"},
    {"mistral_v3.jinja", "<s>", "</s>"},
    {"chatml_generation.jinja", std::nullopt, "<|im_end|>"},
};

Json message(const std::string& role, const std::string& content) { return {{"role", role}, {"content", content}}; }

const Json kTools = Json::parse(R"([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
  "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city, e.g. Oslo"},
  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}])");

struct Conversation {
  std::string name;
  Json messages;
  bool with_tools = false;
};

const std::vector<Conversation> kConversations = {
    {"one turn", Json::array({message("user", "Hello, how are you?"), message("assistant", "Doing great. How can I help?")})},
    {"system and two turns",
     Json::array({message("system", "You are terse."), message("user", "2+2?"), message("assistant", "4"), message("user", "And 3+3?"),
                  message("assistant", "  six, of course\n")})},
    {"code and unicode",
     Json::array({message("user", "Grüße 🤗 — write f"), message("assistant", "def f(x):\n    return [i for i in range(x)]\n\treturn None")})},
    {"reasoning",
     Json::array({message("user", "Why is the sky blue?"), message("assistant", "<think>\nRayleigh.\n</think>\n\nScattering of light."),
                  message("user", "Thanks!"), message("assistant", "You are welcome.")})},
    {"tools", Json::array({message("user", "Weather in Oslo?"), message("assistant", "Let me check the weather there.")}), true},
    {"assistant first", Json::array({message("assistant", "Unprompted."), message("user", "Hm?"), message("assistant", "Indeed.")})},
    // Tool calls as transformers documents them: arguments a dict, the answer a "tool" message.
    {"tool calls",
     Json::array({message("user", "Weather in Oslo?"),
                  {{"role", "assistant"}, {"content", ""},
                   {"tool_calls", Json::parse(R"([{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}])")}},
                  message("tool", "{\"temp\": 21}"), message("assistant", "It is 21 degrees in Oslo.")}),
     true},
    // OpenAI's shape: content null beside the calls, arguments a JSON string.
    {"tool calls, null content",
     Json::array({message("user", "Weather in Oslo?"),
                  {{"role", "assistant"}, {"content", nullptr},
                   {"tool_calls", Json::parse(R"([{"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}])")}},
                  message("tool", "{\"temp\": 21}"), message("assistant", "It is 21 degrees in Oslo.")}),
     true},
};

std::string read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

Json context_of(const ModelTemplate& t, const Json& messages, bool add_generation_prompt, bool with_tools) {
  Json context = {{"messages", messages}, {"add_generation_prompt", add_generation_prompt},
                  {"tools", with_tools ? kTools : Json()}, {"documents", Json()}};
  if (t.bos) context["bos_token"] = *t.bos;
  if (t.eos) context["eos_token"] = *t.eos;
  return context;
}

struct Case {
  const ModelTemplate* model;
  const Conversation* conversation;
  bool generation_prompt;  // the conversation without its last answer, with the generation prompt
  std::string template_text;
  Json context;
};

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const ModelTemplate& t : kTemplates) {
    const std::string text = read(fs::path(SHARDLORA_CHAT_TEMPLATES) / t.file);
    for (const Conversation& c : kConversations) {
      cases.push_back({&t, &c, false, text, context_of(t, c.messages, false, c.with_tools)});
      Json prompt = c.messages;
      prompt.erase(prompt.size() - 1);
      cases.push_back({&t, &c, true, text, context_of(t, prompt, true, c.with_tools)});
    }
  }
  return cases;
}

std::string describe(const Case& c) {
  return c.model->file + ", " + c.conversation->name + (c.generation_prompt ? ", generation prompt" : "");
}

class ChatTemplateParity : public TempDirTest {
 protected:
  // The reference's answer for every case, from `argv` + the cases file.
  Json reference(std::vector<std::string> argv, const std::vector<Case>& cases) {
    Json list = Json::array();
    for (const Case& c : cases) list.push_back({{"template", c.template_text}, {"context", c.context}});
    const std::string cases_file = path("cases.json");
    std::ofstream(cases_file) << list.dump();
    argv.push_back(cases_file);
    const auto result = run_process(argv, 300);
    EXPECT_EQ(result.exit_code, 0) << result.err;
    return result.exit_code == 0 ? Json::parse(result.out) : Json::array();
  }

  static std::optional<std::string> our_render(const Case& c, std::vector<data::jinja::OutputSpan>* spans) {
    try {
      return data::jinja::Template(c.template_text, c.model->file).render(c.context, spans);
    } catch (const Error&) {
      return std::nullopt;
    }
  }
};

}  // namespace

TEST_F(ChatTemplateParity, RendersEqualJinja2AsTransformersRunsIt) {
  if (run_process({"/usr/bin/env", "python3", "-c", "import jinja2"}).exit_code != 0) {
    GTEST_SKIP() << "python3 with jinja2 is not installed (Debian: python3-jinja2; scripts/setup installs it)";
  }
  const std::vector<Case> cases = all_cases();
  const std::string script = path("reference.py");
  std::ofstream(script) << kJinja2Script;
  const Json expected = reference({"/usr/bin/env", "python3", script}, cases);
  ASSERT_EQ(expected.size(), cases.size());
  int rendered = 0, raised = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<data::jinja::OutputSpan> spans;
    const auto ours = our_render(cases[i], &spans);
    if (expected[i].contains("error")) {
      EXPECT_FALSE(ours) << describe(cases[i]) << ": Jinja2 raised (" << expected[i]["error"] << "), we rendered:\n" << ours.value_or("");
      ++raised;
      continue;
    }
    ASSERT_TRUE(ours) << describe(cases[i]) << ": we raised, Jinja2 rendered:\n" << expected[i]["text"].get<std::string>();
    EXPECT_EQ(*ours, expected[i]["text"].get<std::string>()) << describe(cases[i]);
    Json our_spans = Json::array();
    for (const auto& span : spans) our_spans.push_back({span.begin, span.end});
    EXPECT_EQ(our_spans, expected[i]["spans"]) << describe(cases[i]);
    ++rendered;
  }
  EXPECT_GT(raised, 0);  // the role checks of Gemma 3 and Mistral are exercised
  std::printf("%zu cases: %d renders equal to Jinja2's, %d raised by both\n", cases.size(), rendered, raised);
}

TEST_F(ChatTemplateParity, RendersEqualHuggingFaceJinja) {
  const char* modules = std::getenv("SHARDLORA_NODE_MODULES");
  if (!modules || !fs::exists(fs::path(modules) / "@huggingface" / "jinja")) {
    GTEST_SKIP() << "@huggingface/jinja not installed: set SHARDLORA_NODE_MODULES to a node_modules holding it "
                    "(npm install --prefix DIR @huggingface/jinja)";
  }
  if (run_process({"/usr/bin/env", "node", "--version"}).exit_code != 0) GTEST_SKIP() << "node is not installed";
  const std::vector<Case> cases = all_cases();
  const std::string script = path("reference.js");
  std::ofstream(script) << kHuggingFaceJsScript;
  const Json expected = reference({"/usr/bin/env", std::string("NODE_PATH=") + modules, "node", script}, cases);
  ASSERT_EQ(expected.size(), cases.size());
  // Where the JS port departs from Jinja2 (the renderer transformers trains with), Jinja2 decides.
  const bool have_jinja2 = run_process({"/usr/bin/env", "python3", "-c", "import jinja2"}).exit_code == 0;
  Json jinja2;
  if (have_jinja2) {
    std::ofstream(path("reference.py")) << kJinja2Script;
    jinja2 = reference({"/usr/bin/env", "python3", path("reference.py")}, cases);
  }
  int rendered = 0, departures = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto ours = our_render(cases[i], nullptr);
    const std::string peer_text = expected[i].value("text", "");
    const bool agree = expected[i].contains("error") ? !ours : ours && *ours == peer_text;
    if (!agree && have_jinja2 && (jinja2[i].contains("text") ? ours && jinja2[i]["text"].get<std::string>() == *ours : !ours)) {
      std::printf("%s: @huggingface/jinja departs from Jinja2 here (%s); ours equals Jinja2's\n", describe(cases[i]).c_str(),
                  expected[i].contains("error") ? expected[i]["error"].get<std::string>().c_str() : "another text");
      ++departures;
      continue;
    }
    if (expected[i].contains("error")) {
      EXPECT_FALSE(ours) << describe(cases[i]) << ": @huggingface/jinja raised (" << expected[i]["error"] << ")";
      continue;
    }
    ASSERT_TRUE(ours) << describe(cases[i]) << ": we raised, @huggingface/jinja rendered";
    EXPECT_EQ(*ours, peer_text) << describe(cases[i]);
    ++rendered;
  }
  std::printf("%zu cases: %d renders equal to @huggingface/jinja's, %d where it departs from Jinja2\n", cases.size(), rendered,
              departures);
}

// The spans render_chat trains on, on every template and conversation the template accepts;
// refused (an error naming the template) where no prefix of the render is stable: Mistral
// v0.3 writes the system prompt only before the last user turn, so the prompt of the last
// answer is not the start of the whole render; before an opening answer, Qwen3 cannot render
// the empty conversation (it reads messages[0]), Llama 3.1's gives no bos and SmolLM2's no
// default system prompt (both come with the first message); DeepSeek-V3's writes no end of
// sentence after a turn of one tool call, so nothing closes it before the next answer.
TEST_F(ChatTemplateParity, EachAssistantTurnIsFoundInTheRender) {
  const std::set<std::pair<std::string, std::string>> refused = {{"mistral_v3.jinja", "system and two turns"},
                                                                 {"qwen3.jinja", "assistant first"},
                                                                 {"llama3_1.jinja", "assistant first"},
                                                                 {"smollm2.jinja", "assistant first"},
                                                                 {"deepseek_v3.jinja", "tool calls, null content"}};
  int conversations = 0;
  for (const ModelTemplate& t : kTemplates) {
    data::ChatTemplate chat;
    chat.name = "auto";
    chat.jinja = std::make_shared<const data::jinja::Template>(read(fs::path(SHARDLORA_CHAT_TEMPLATES) / t.file), t.file);
    chat.bos_token = t.bos;
    chat.eos_token = t.eos;
    chat.stop_texts = {*t.eos};
    for (const Conversation& c : kConversations) {
      std::vector<data::Message> messages;
      for (const auto& m : c.messages) {
        data::Message message{m["role"].get<std::string>(), m["content"].is_null() ? "" : m["content"].get<std::string>()};
        message.null_content = m["content"].is_null();
        if (m.contains("tool_calls")) message.extra = std::make_shared<const Json>(Json{{"tool_calls", m["tool_calls"]}});
        messages.push_back(std::move(message));
      }
      const std::string where = t.file + ", " + c.name;
      const Json* tools = c.with_tools ? &kTools : nullptr;
      std::string full;
      try {
        full = chat.jinja->render(context_of(t, c.messages, false, c.with_tools));
      } catch (const Error& e) {
        EXPECT_THROW(data::render_chat(chat, messages, true, tools), Error) << where;
        continue;  // the template refuses the conversation (roles out of order)
      }
      if (refused.count({t.file, c.name})) {
        try {
          data::render_chat(chat, messages, true, tools);
          ADD_FAILURE() << where << ": rendered, expected a refusal";
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("chat template " + t.file + ": cannot find assistant message"), std::string::npos)
              << e.what();
        }
        continue;
      }
      const std::vector<data::Segment> segments = data::render_chat(chat, messages, true, tools);
      std::string joined;
      std::vector<std::string> trained;
      for (const data::Segment& s : segments) {
        joined += s.text;
        if (s.trainable) trained.push_back(s.text);
      }
      EXPECT_EQ(joined, full) << where;
      size_t answer = 0;
      for (const data::Message& m : messages) {
        if (m.role != "assistant") continue;
        ASSERT_LT(answer, trained.size()) << where;
        // The answer as templates write it: reasoning dropped from earlier turns, trimmed.
        std::string text = m.content.substr(m.content.find("</think>") == std::string::npos ? 0 : m.content.find("</think>") + 8);
        if (text.find_first_not_of(" \n") != std::string::npos) {
          text = text.substr(text.find_first_not_of(" \n"), text.find_last_not_of(" \n") - text.find_first_not_of(" \n") + 1);
        }
        EXPECT_NE(trained[answer].find(text), std::string::npos) << where << ": turn " << answer << " is '" << trained[answer] << "'";
        EXPECT_EQ(trained[answer].substr(trained[answer].size() - t.eos->size()), *t.eos) << where << ": turn " << answer;
        for (const data::Segment& s : segments) {
          if (!s.trainable && !text.empty()) EXPECT_EQ(s.text.find(text), std::string::npos) << where << ": an answer in the prompt: " << s.text;
        }
        // Qwen3 writes the calls (<tool_call> JSON): they are the trained turn.
        if (m.extra && t.file == "qwen3.jinja") {
          EXPECT_NE(trained[answer].find("get_weather"), std::string::npos) << where << ": " << trained[answer];
        }
        ++answer;
      }
      EXPECT_EQ(answer, trained.size()) << where;
      const std::vector<data::Message> prompt(messages.begin(), messages.end() - 1);
      Json prompt_messages = c.messages;
      prompt_messages.erase(prompt_messages.size() - 1);
      if (!c.with_tools) {
        EXPECT_EQ(data::render_generation_prompt(chat, prompt)[0].text, chat.jinja->render(context_of(t, prompt_messages, true, false)))
            << where;
      }
      ++conversations;
    }
  }
  EXPECT_GE(conversations, 40);
}
