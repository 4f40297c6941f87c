// Prompt formats without a Jinja engine: each built-in template is per-role prefix / suffix
// text around the message content (the special tokens written as text, which the tokenizer
// maps to their ids). Rendering yields segments marked trainable or not: the assistant's
// content and its closing suffix are trained on, everything else is prompt (label -100).
//   llama-3  <|begin_of_text|><|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>
//   chatml   <|im_start|>ROLE\nCONTENT<|im_end|>\n                                 (Qwen2)
//   mistral  <s>[INST] USER [/INST]ASSISTANT</s>                       (system joined to user)
//   llama-2  <s>[INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nUSER [/INST] ASSISTANT </s>
//   alpaca   Below is an instruction ... ### Instruction:\nUSER\n\n### Response:\nASSISTANT</s>
#pragma once

#include <map>
#include <string>
#include <vector>

namespace shardlora::data {

struct Message {
  std::string role;  // system, user or assistant
  std::string content;
};

struct Segment {
  std::string text;
  bool trainable;
};

struct RoleFormat {
  std::string prefix, suffix;
};

struct ChatTemplate {
  std::string name;
  std::string begin;                         // once, before the first message
  std::map<std::string, RoleFormat> roles;   // by role
  std::string system_into_user_prefix;       // mistral / llama-2: system folded into the first user turn
  std::string system_into_user_suffix;
  std::string input_separator = "\n\n";    // between an alpaca record's instruction and input
};

// llama-3, chatml, mistral, llama-2, alpaca; anything else is an error naming the choices.
ChatTemplate builtin_chat_template(const std::string& name);

// Errors name the message index and role (unknown role, a conversation without an assistant
// turn to train on when `require_assistant`).
std::vector<Segment> render_chat(const ChatTemplate& chat_template, const std::vector<Message>& messages,
                                 bool require_assistant = true);

// What a model continues to answer: `messages` (none of them from the assistant at the end)
// rendered, then the assistant's prefix.
std::vector<Segment> render_generation_prompt(const ChatTemplate& chat_template, const std::vector<Message>& messages);

}  // namespace shardlora::data
