#include "shardlora/data/chat_template.h"

#include "shardlora/kernels/check.h"

namespace shardlora::data {

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
    throw Error("unknown chat template '" + name + "' (llama-3, chatml, mistral, llama-2, alpaca, or custom roles in the recipe)");
  }
  return t;
}

std::vector<Segment> render_chat(const ChatTemplate& t, const std::vector<Message>& messages, bool require_assistant) {
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
  std::vector<Segment> segments = render_chat(t, messages, /*require_assistant=*/false);
  const auto assistant = t.roles.find("assistant");
  SHARDLORA_CHECK(assistant != t.roles.end(), "chat template '", t.name, "' has no assistant role");
  segments.push_back({assistant->second.prefix, false});
  return segments;
}

}  // namespace shardlora::data
