#include "shardlora/data/chat_template.h"

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "shardlora/data/tokenizer.h"
#include "shardlora/io/hf_checkpoint.h"
#include "shardlora/kernels/check.h"

namespace shardlora::data {
namespace {

namespace fs = std::filesystem;
using OrderedJson = nlohmann::ordered_json;

// Appended to an assistant's content to find where the template writes the content's end:
// private-use characters, which no strip() or trim takes for whitespace.
constexpr const char* kContentEndMarker = "\uE000shardlora content end\uE001";

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SHARDLORA_CHECK(in, path, ": cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// tokenizer_config.json's chat_template: a string, or [{name, template}, ...].
std::optional<std::string> template_text(const nlohmann::json& config, const std::string& file) {
  const auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  SHARDLORA_CHECK(it->is_array(), file, ": key 'chat_template' must be a string or a list of {name, template}");
  for (const auto& entry : *it) {
    if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") && entry["template"].is_string()) {
      return entry["template"].get<std::string>();
    }
  }
  throw Error(file + ": key 'chat_template' is a list without a 'default' template");
}

// The marker goes before trailing whitespace, so a template that trims the content trims the
// same characters with it as without.
std::string with_end_marker(const std::string& content) {
  const size_t end = content.find_last_not_of(" \t\r\n");
  const size_t at = end == std::string::npos ? 0 : end + 1;
  return content.substr(0, at) + kContentEndMarker + content.substr(at);
}

class JinjaChat {
 public:
  JinjaChat(const ChatTemplate& t, const std::vector<Message>& messages, const OrderedJson* tools)
      : t_(t), messages_(messages), tools_(tools) {}

  std::string render(size_t count, bool add_generation_prompt, std::optional<size_t> marked = std::nullopt,
                     std::vector<jinja::OutputSpan>* generation = nullptr) const {
    OrderedJson context = OrderedJson::object();
    OrderedJson list = OrderedJson::array();
    for (size_t i = 0; i < count; ++i) {
      const Message& m = messages_[i];
      OrderedJson message = {{"role", m.role}, {"content", marked == i ? with_end_marker(m.content) : m.content}};
      if (m.null_content && marked != i) message["content"] = nullptr;
      if (m.extra) {
        for (const auto& [key, value] : m.extra->items()) message[key] = value;
      }
      list.push_back(std::move(message));
    }
    context["messages"] = std::move(list);
    context["add_generation_prompt"] = add_generation_prompt;
    // As transformers' apply_chat_template: tools and documents always given (None when absent).
    context["tools"] = tools_ ? *tools_ : OrderedJson();
    context["documents"] = OrderedJson();
    if (t_.bos_token) context["bos_token"] = *t_.bos_token;
    if (t_.eos_token) context["eos_token"] = *t_.eos_token;
    return t_.jinja->render(context, generation);
  }

  std::vector<Segment> segments(bool require_assistant) const {
    std::vector<jinja::OutputSpan> spans;
    const std::string full = render(messages_.size(), false, std::nullopt, &spans);
    if (!t_.jinja->has_generation_blocks()) spans = assistant_spans(full);
    SHARDLORA_CHECK(!spans.empty() || !require_assistant, "the conversation has no assistant message to train on (chat template ",
                    t_.jinja->name(), ")");
    std::vector<Segment> out;
    size_t at = 0;
    for (const jinja::OutputSpan& span : spans) {
      if (span.begin > at) out.push_back({full.substr(at, span.begin - at), false});
      out.push_back({full.substr(span.begin, span.end - span.begin), true});
      at = span.end;
    }
    if (at < full.size()) out.push_back({full.substr(at), false});
    return out;
  }

 private:
  [[noreturn]] void refuse(size_t k, const std::string& why) const {
    throw Error("chat template " + t_.jinja->name() + ": cannot find assistant message " + std::to_string(k) + " in the render: " +
                why + " (a template with {% generation %} blocks, a built-in data.template or a custom one works)");
  }

  std::vector<jinja::OutputSpan> assistant_spans(const std::string& full) const {
    std::vector<jinja::OutputSpan> spans;
    const std::string marker = kContentEndMarker;
    for (size_t k = 0; k < messages_.size(); ++k) {
      if (messages_[k].role != "assistant") continue;
      std::string prompt;
      try {
        prompt = render(k, true);
      } catch (const Error& e) {
        refuse(k, std::string("the messages before it do not render: ") + e.what());
      }
      if (full.compare(0, prompt.size(), prompt) != 0) {
        refuse(k, "the messages before it, with the generation prompt, do not render as the start of the whole conversation");
      }
      if (!spans.empty() && prompt.size() < spans.back().end) refuse(k, "its prompt overlaps the previous assistant turn");
      if (messages_[k].null_content || messages_[k].content.empty()) {
        // Tool calls only (templates branch on an empty content, so none is marked): the turn
        // runs to the first stop text after its prompt.
        size_t end = std::string::npos;
        for (const std::string& stop : t_.stop_texts) {
          const size_t found = stop.empty() ? std::string::npos : full.find(stop, prompt.size());
          if (found != std::string::npos) end = std::min(end, found + stop.size());
        }
        if (end == std::string::npos) refuse(k, "no stop text follows it, so the model would never learn to stop");
        spans.push_back({prompt.size(), end});
        continue;
      }
      const std::string marked = render(messages_.size(), false, k);
      const size_t content_end = marked.find(marker);
      if (content_end == std::string::npos || marked.find(marker, content_end + 1) != std::string::npos ||
          marked.compare(0, content_end, full, 0, content_end) != 0 ||
          marked.compare(content_end + marker.size(), std::string::npos, full, content_end) != 0 || content_end < prompt.size()) {
        refuse(k, "the template does not write the message's content as given");
      }
      const std::string alone = render(k + 1, false, k);
      const size_t alone_end = alone.find(marker);
      if (alone_end == std::string::npos) refuse(k, "the template does not write the content when the turn is the last one");
      // What closes the turn both here and when it is the last: up to and including a stop text.
      const std::string tail = alone.substr(alone_end + marker.size());
      size_t closing = 0;
      while (closing < tail.size() && content_end + closing < full.size() && tail[closing] == full[content_end + closing]) ++closing;
      size_t cut = closing;
      for (const std::string& stop : t_.stop_texts) {
        const size_t found = stop.empty() ? std::string::npos : tail.substr(0, closing).find(stop);
        if (found != std::string::npos) cut = std::min(cut, found + stop.size());
      }
      if (cut == 0) refuse(k, "the template writes nothing after the content to end the turn, so the model would never learn to stop");
      spans.push_back({prompt.size(), content_end + cut});
    }
    return spans;
  }

  const ChatTemplate& t_;
  const std::vector<Message>& messages_;
  const OrderedJson* tools_;
};

}  // namespace

std::optional<ChatTemplate> model_chat_template(const std::string& model_dir, const Tokenizer& tokenizer) {
  std::optional<std::string> text;
  std::string file;
  const std::string config_path = model_dir + "/tokenizer_config.json";
  const nlohmann::json config = fs::exists(config_path) ? io::read_json_file(config_path) : nlohmann::json::object();
  if (fs::exists(model_dir + "/chat_template.jinja")) {
    file = model_dir + "/chat_template.jinja";
    text = read_text_file(file);
  } else if (fs::exists(model_dir + "/chat_template.json")) {
    file = model_dir + "/chat_template.json";
    text = template_text(io::read_json_file(file), file);
  } else {
    file = config_path;
    text = template_text(config, file);
  }
  if (!text) return std::nullopt;
  ChatTemplate t;
  t.name = "auto";
  t.jinja = std::make_shared<const jinja::Template>(*text, file);
  t.bos_token = special_token_text(config, "bos_token", config_path);
  t.eos_token = special_token_text(config, "eos_token", config_path);
  for (const int64_t id : tokenizer.special().stop_ids) t.stop_texts.push_back(tokenizer.decode({id}));
  if (t.eos_token) t.stop_texts.push_back(*t.eos_token);
  return t;
}

ChatTemplate builtin_chat_template(const std::string& name) {
  ChatTemplate t;
  t.name = name;
  if (name == "llama-3") {
    t.begin = "<|begin_of_text|>";
    for (const char* role : {"system", "user", "assistant"}) {
      t.roles[role] = {std::string("<|start_header_id|>") + role + "<|end_header_id|>\n\n", "<|eot_id|>"};
    }
  } else if (name == "chatml") {
    for (const char* role : {"system", "user", "assistant"}) t.roles[role] = {std::string("<|im_start|>") + role + "\n", "<|im_end|>\n"};
  } else if (name == "mistral") {
    t.begin = "<s>";
    t.roles["user"] = {"[INST] ", " [/INST]"};
    t.roles["assistant"] = {"", "</s>"};
    t.system_into_user_suffix = "\n\n";
  } else if (name == "llama-2") {
    t.begin = "<s>";
    t.roles["user"] = {"[INST] ", " [/INST]"};
    t.roles["assistant"] = {" ", " </s>"};
    t.system_into_user_prefix = "<<SYS>>\n";
    t.system_into_user_suffix = "\n<</SYS>>\n\n";
  } else if (name == "alpaca") {
    t.roles["system"] = {"", "\n\n"};
    t.roles["user"] = {"### Instruction:\n", "\n\n"};
    t.roles["assistant"] = {"### Response:\n", "</s>"};
    t.input_separator = "\n\n### Input:\n";
    t.begin = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n";
  } else {
    throw Error("unknown chat template '" + name + "' (auto, llama-3, chatml, mistral, llama-2, alpaca, or custom roles in the recipe)");
  }
  return t;
}

ChatTemplate resolve_chat_template(const std::string& name, const std::string& model_dir, const Tokenizer& tokenizer) {
  if (name != "auto") return builtin_chat_template(name);
  std::optional<ChatTemplate> own = model_chat_template(model_dir, tokenizer);
  return own ? std::move(*own) : builtin_chat_template("chatml");
}

std::vector<Segment> render_chat(const ChatTemplate& t, const std::vector<Message>& messages, bool require_assistant,
                                 const nlohmann::ordered_json* tools) {
  if (t.jinja) return JinjaChat(t, messages, tools).segments(require_assistant);
  std::vector<Segment> segments;
  if (!t.begin.empty()) segments.push_back({t.begin, false});
  std::string pending_system;  // folded into the next user turn, for templates without a system role
  bool trained = false;
  for (size_t i = 0; i < messages.size(); ++i) {
    const Message& message = messages[i];
    if (message.role == "system" && !t.roles.count("system")) {
      pending_system = t.system_into_user_prefix + message.content + t.system_into_user_suffix;
      continue;
    }
    const auto format = t.roles.find(message.role);
    SHARDLORA_CHECK(format != t.roles.end(), "message ", i, ": role '", message.role, "' has no format in chat template '",
                    t.name, "'");
    const bool assistant = message.role == "assistant";
    std::string content = message.content;
    if (message.role == "user" && !pending_system.empty()) {
      content = pending_system + content;
      pending_system.clear();
    }
    segments.push_back({format->second.prefix, false});
    segments.push_back({content + format->second.suffix, assistant});
    trained = trained || assistant;
  }
  SHARDLORA_CHECK(trained || !require_assistant, "the conversation has no assistant message to train on");
  return segments;
}

std::vector<Segment> render_generation_prompt(const ChatTemplate& t, const std::vector<Message>& messages) {
  if (t.jinja) return {{JinjaChat(t, messages, nullptr).render(messages.size(), true), false}};
  std::vector<Segment> segments = render_chat(t, messages, /*require_assistant=*/false);
  const auto assistant = t.roles.find("assistant");
  SHARDLORA_CHECK(assistant != t.roles.end(), "chat template '", t.name, "' has no assistant role");
  segments.push_back({assistant->second.prefix, false});
  return segments;
}

}  // namespace shardlora::data
