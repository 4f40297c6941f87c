// The Jinja subset that models' chat templates (tokenizer_config.json's chat_template) are
// written in, rendered as transformers renders them: trim_blocks and lstrip_blocks on, a
// single trailing newline dropped, no autoescape, loop controls, Python's semantics for
// values (truthiness, `~`, printing None / True, str methods, tojson as json.dumps with
// ensure_ascii=False), and transformers' {% generation %} blocks, whose output is reported
// as spans. Statements: if / elif / else, for (loop.*, `if` filter, else), set (targets,
// namespace attributes, blocks), macro, call, filter, break, continue, raw. Globals:
// raise_exception, strftime_now, namespace, range, dict. Errors (syntax and at run time)
// read "NAME:LINE:COL: what".
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace shardlora::data::jinja {

struct Program;

// Byte range [begin, end) of rendered output.
struct OutputSpan {
  size_t begin, end;
};

class Template {
 public:
  // Parses `source`; `name` (a file name, usually) prefixes every error.
  Template(const std::string& source, std::string name);
  ~Template();

  // `context`: the template's variables (an object). `generation`, when given, receives the
  // spans written inside {% generation %} blocks.
  std::string render(const nlohmann::ordered_json& context, std::vector<OutputSpan>* generation = nullptr) const;

  bool has_generation_blocks() const;
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  std::shared_ptr<const Program> program_;
};

}  // namespace shardlora::data::jinja
