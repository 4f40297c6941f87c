// Prompt formats without a Jinja engine: each built-in template is per-role prefix / suffix
// text around the message content (the special tokens written as text, which the tokenizer
// maps to their ids). Rendering yields segments marked trainable or not: the assistant's
// content and its closing suffix are trained on, everything else is prompt (label -100).
//   llama-3  <|begin_of_text|><|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>
//   chatml   <|im_start|>ROLE\nCONTENT<|im_end|>\n                                 (Qwen2)
//   mistral  <s>[INST] USER [/INST]ASSISTANT</s>                       (system joined to user)
//   llama-2  <s>[INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nUSER [/INST] ASSISTANT </s>
//   alpaca   Below is an instruction ... ### Instruction:\nUSER\n\n### Response:\nASSISTANT</s>
// Or the model's own Jinja template (data.template: auto): the whole conversation rendered as
// transformers renders it, each assistant turn found in it (see render_chat).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "shardlora/data/jinja.h"

namespace shardlora::data {

class Tokenizer;

struct Message {
  Message() = default;
  Message(std::string role_name, std::string text) : role(std::move(role_name)), content(std::move(text)) {}

  std::string role;  // system, user or assistant (a Jinja template may know others: tool, ...)
  std::string content;
  // The dataset message's other keys (tool_calls, reasoning_content, name, ...), which a Jinja
  // template sees as the message's; and whether its content was null (an assistant turn
  // holding only tool calls), which a Jinja template sees as None.
  std::shared_ptr<const nlohmann::ordered_json> extra;
  bool null_content = false;
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

  // The model's own template, with the variables it is rendered with.
  std::shared_ptr<const jinja::Template> jinja;
  std::optional<std::string> bos_token, eos_token;  // undefined in the template when the model names none
  std::vector<std::string> stop_texts;  // eos and generation_config's eos ids, as text: a turn ends after one
};

// llama-3, chatml, mistral, llama-2, alpaca; anything else is an error naming the choices.
ChatTemplate builtin_chat_template(const std::string& name);

// The chat template the model directory ships, as transformers finds it: chat_template.jinja,
// else chat_template.json, else tokenizer_config.json's chat_template (a string, or a list of
// {name, template} of which "default" is taken). nullopt when it has none.
std::optional<ChatTemplate> model_chat_template(const std::string& model_dir, const Tokenizer& tokenizer);

// data.template / --template: "auto" is the model's own template, or chatml when the model
// ships none; any other name a built-in.
ChatTemplate resolve_chat_template(const std::string& name, const std::string& model_dir, const Tokenizer& tokenizer);

// Errors name the message index and role (unknown role, a conversation without an assistant
// turn to train on when `require_assistant`).
//
// A Jinja template renders the whole conversation once (add_generation_prompt false); the
// trainable text is what its {% generation %} blocks write when it has them. Otherwise each
// assistant turn k is found by rendering incrementally: it starts where messages[:k] with the
// generation prompt ends (which must be a prefix of the whole render), its content ends where
// a marker appended to the content lands, and its closing is the text the template writes
// after that content both in the whole render and when the turn is the last one, cut after
// the first stop text (eos, <|eot_id|>, <|im_end|>, ...). A template for which a step fails
// is an error naming it and the message. `tools`, when given, is the template's `tools`.
std::vector<Segment> render_chat(const ChatTemplate& chat_template, const std::vector<Message>& messages,
                                 bool require_assistant = true, const nlohmann::ordered_json* tools = nullptr);

// What a model continues to answer: `messages` (none of them from the assistant at the end)
// rendered, then the assistant's prefix.
std::vector<Segment> render_generation_prompt(const ChatTemplate& chat_template, const std::vector<Message>& messages);

}  // namespace shardlora::data
