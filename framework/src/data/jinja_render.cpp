// Rendering the parsed Jinja subset with Python's value semantics (see shardlora/data/jinja.h).
// Dicts keep insertion order, as the Python dicts that transformers passes; lists and dicts
// are never changed in place (transformers renders in an immutable sandbox).
#include <unicode/uchar.h>
#include <unicode/utf8.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <functional>
#include <optional>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "jinja_ast.h"
#include "shardlora/data/jinja.h"
#include "shardlora/data/utf8.h"
#include "shardlora/kernels/check.h"

namespace shardlora::data::jinja {

const Value* Object::find(const std::string& key) const {
  for (const auto& entry : entries) {
    if (entry.first == key) return &entry.second;
  }
  return nullptr;
}

void Object::set(const std::string& key, Value value) {
  for (auto& entry : entries) {
    if (entry.first == key) {
      entry.second = std::move(value);
      return;
    }
  }
  entries.emplace_back(key, std::move(value));
}

namespace {

using Type = Value::Type;

Value from_json(const nlohmann::ordered_json& json) {
  switch (json.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::of(json.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
    case nlohmann::ordered_json::value_t::number_unsigned: return Value::of(json.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_float: return Value::of(json.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value::of(json.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      Array array;
      for (const auto& item : json) array.push_back(from_json(item));
      return Value::of(std::move(array));
    }
    case nlohmann::ordered_json::value_t::object: {
      Object object;
      for (const auto& [key, item] : json.items()) object.entries.emplace_back(key, from_json(item));
      return Value::of(std::move(object));
    }
    default: throw Error("chat template context: a value of JSON type '" + std::string(json.type_name()) + "' cannot be rendered");
  }
}

const char* type_name(const Value& v) {
  switch (v.type) {
    case Type::Undefined: return "undefined";
    case Type::None: return "NoneType";
    case Type::Bool: return "bool";
    case Type::Int: return "int";
    case Type::Float: return "float";
    case Type::String: return "str";
    case Type::Array: return "list";
    case Type::Object: return v.is_namespace ? "Namespace" : "dict";
    case Type::Function: return "function";
  }
  return "?";
}

// repr(float): the shortest text that reads back as the same double.
std::string python_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buffer[32];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*g", precision, d);
    if (std::strtod(buffer, nullptr) == d) break;
  }
  std::string text = buffer;
  if (text.find_first_of(".en") == std::string::npos) text += ".0";
  return text;
}

std::string str(const Value& v);

std::string repr_string(const std::string& s) {
  const char quote = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (const char c : s) {
    if (c == quote || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else {
      out += c;
    }
  }
  return out + quote;
}

std::string repr(const Value& v) {
  if (v.is(Type::String)) return repr_string(v.string);
  if (v.is(Type::Array)) {
    std::string out = "[";
    for (size_t i = 0; i < v.array->size(); ++i) out += (i ? ", " : "") + repr((*v.array)[i]);
    return out + "]";
  }
  if (v.is(Type::Object) && !v.is_namespace) {
    std::string out = "{";
    for (size_t i = 0; i < v.object->entries.size(); ++i) {
      out += (i ? ", " : "") + repr_string(v.object->entries[i].first) + ": " + repr(v.object->entries[i].second);
    }
    return out + "}";
  }
  return str(v);
}

// str(): what {{ }} prints.
std::string str(const Value& v) {
  switch (v.type) {
    case Type::Undefined: return "";
    case Type::None: return "None";
    case Type::Bool: return v.boolean ? "True" : "False";
    case Type::Int: return std::to_string(v.integer);
    case Type::Float: return python_float(v.real);
    case Type::String: return v.string;
    case Type::Function: return "<function>";
    case Type::Object:
      if (v.is_namespace) return "<Namespace>";
      [[fallthrough]];
    case Type::Array: return repr(v);
  }
  return "";
}

bool truthy(const Value& v) {
  switch (v.type) {
    case Type::Undefined:
    case Type::None: return false;
    case Type::Bool: return v.boolean;
    case Type::Int: return v.integer != 0;
    case Type::Float: return v.real != 0;
    case Type::String: return !v.string.empty();
    case Type::Array: return !v.array->empty();
    case Type::Object: return v.is_namespace || !v.object->entries.empty();
    case Type::Function: return true;
  }
  return false;
}

double number(const Value& v) {
  return v.is(Type::Float) ? v.real : v.is(Type::Bool) ? static_cast<double>(v.boolean) : static_cast<double>(v.integer);
}
bool integral(const Value& v) { return v.is(Type::Int) || v.is(Type::Bool); }
int64_t integer(const Value& v) { return v.is(Type::Bool) ? v.boolean : v.integer; }

bool equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    return integral(a) && integral(b) ? integer(a) == integer(b) : number(a) == number(b);
  }
  if (a.type != b.type) return false;
  switch (a.type) {
    case Type::Undefined:
    case Type::None: return true;
    case Type::String: return a.string == b.string;
    case Type::Array:
      return a.array->size() == b.array->size() &&
             std::equal(a.array->begin(), a.array->end(), b.array->begin(), [](const Value& x, const Value& y) { return equal(x, y); });
    case Type::Object: {
      if (a.object->entries.size() != b.object->entries.size()) return false;
      for (const auto& [key, value] : a.object->entries) {
        const Value* other = b.object->find(key);
        if (!other || !equal(value, *other)) return false;
      }
      return true;
    }
    case Type::Function: return a.function == b.function;
    default: return false;
  }
}

// -1, 0, 1; nullopt when Python would raise TypeError.
std::optional<int> compare(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    const double x = number(a), y = number(b);
    if (integral(a) && integral(b)) return integer(a) < integer(b) ? -1 : integer(a) > integer(b) ? 1 : 0;
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is(Type::String) && b.is(Type::String)) return a.string < b.string ? -1 : a.string > b.string ? 1 : 0;  // UTF-8 order = code points
  if (a.is(Type::Array) && b.is(Type::Array)) {
    for (size_t i = 0; i < std::min(a.array->size(), b.array->size()); ++i) {
      const auto c = compare((*a.array)[i], (*b.array)[i]);
      if (!c || *c != 0) return c;
    }
    return a.array->size() < b.array->size() ? -1 : a.array->size() > b.array->size() ? 1 : 0;
  }
  return std::nullopt;
}

// json.dumps(value, ensure_ascii=False, indent, separators, sort_keys).
struct JsonStyle {
  std::string indent;  // empty: one line
  bool indented = false;
  std::string item_separator = ", ", key_separator = ": ";
  bool sort_keys = false;
};

// json.dumps(ensure_ascii=False) escapes as nlohmann's serializer does: ", \, \b \f \n \r
// \t, other control characters as \u00XX, everything else as is.
void json_string(const std::string& s, std::string* out) {
  *out += nlohmann::json(s).dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

bool to_json(const Value& v, const JsonStyle& style, int depth, std::string* out) {
  const auto newline = [&](int level) {
    if (!style.indented) return;
    *out += '\n';
    for (int i = 0; i < level; ++i) *out += style.indent;
  };
  switch (v.type) {
    case Type::None: *out += "null"; return true;
    case Type::Bool: *out += v.boolean ? "true" : "false"; return true;
    case Type::Int: *out += std::to_string(v.integer); return true;
    case Type::Float:
      *out += std::isnan(v.real) ? "NaN" : std::isinf(v.real) ? (v.real > 0 ? "Infinity" : "-Infinity") : python_float(v.real);
      return true;
    case Type::String: json_string(v.string, out); return true;
    case Type::Array: {
      *out += '[';
      for (size_t i = 0; i < v.array->size(); ++i) {
        if (i) *out += style.item_separator;
        newline(depth + 1);
        if (!to_json((*v.array)[i], style, depth + 1, out)) return false;
      }
      if (!v.array->empty()) newline(depth);
      *out += ']';
      return true;
    }
    case Type::Object: {
      std::vector<const std::pair<std::string, Value>*> entries;
      for (const auto& entry : v.object->entries) entries.push_back(&entry);
      if (style.sort_keys) std::sort(entries.begin(), entries.end(), [](auto* x, auto* y) { return x->first < y->first; });
      *out += '{';
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i) *out += style.item_separator;
        newline(depth + 1);
        json_string(entries[i]->first, out);
        *out += style.key_separator;
        if (!to_json(entries[i]->second, style, depth + 1, out)) return false;
      }
      if (!entries.empty()) newline(depth);
      *out += '}';
      return true;
    }
    default: return false;
  }
}

uint32_t code_point(const std::string& ch) {
  int32_t at = 0;
  UChar32 c = 0;
  U8_NEXT(ch.data(), at, static_cast<int32_t>(ch.size()), c);
  return c < 0 ? 0xFFFD : static_cast<uint32_t>(c);
}

// str.isspace's characters.
bool python_space(const std::string& ch) {
  const uint32_t c = code_point(ch);
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || u_isUWhiteSpace(static_cast<UChar32>(c));
}

std::string strip(const std::string& s, const Value* chars, bool left, bool right) {
  const std::vector<std::string> cs = utf8_chars(s);
  std::vector<std::string> set;
  if (chars && chars->is(Type::String)) set = utf8_chars(chars->string);
  const auto strippable = [&](const std::string& ch) {
    return chars && chars->is(Type::String) ? std::find(set.begin(), set.end(), ch) != set.end() : python_space(ch);
  };
  size_t begin = 0, end = cs.size();
  while (left && begin < end && strippable(cs[begin])) ++begin;
  while (right && end > begin && strippable(cs[end - 1])) --end;
  std::string out;
  for (size_t i = begin; i < end; ++i) out += cs[i];
  return out;
}

std::string icu_case(const std::string& s, bool upper) {
  icu::UnicodeString text = icu::UnicodeString::fromUTF8(s);
  if (upper) {
    text.toUpper();
  } else {
    text.toLower();
  }
  std::string out;
  text.toUTF8String(out);
  return out;
}

// Jinja's capitalize / title: first character upper, the rest lower (title: of each word).
std::string capitalize(const std::string& s, bool each_word) {
  std::string out;
  bool start = true;
  for (const std::string& ch : utf8_chars(s)) {
    out += icu_case(ch, start);
    const uint32_t c = code_point(ch);
    start = each_word && (python_space(ch) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<');
  }
  return out;
}

std::vector<Value> split(const std::string& s, const Value* separator, int64_t max_split) {
  std::vector<Value> parts;
  if (!separator || separator->is(Type::None)) {
    const std::vector<std::string> cs = utf8_chars(s);
    size_t i = 0;
    while (true) {
      while (i < cs.size() && python_space(cs[i])) ++i;
      if (i == cs.size()) break;
      std::string part;
      if (max_split >= 0 && static_cast<int64_t>(parts.size()) == max_split) {
        for (; i < cs.size(); ++i) part += cs[i];
        parts.push_back(Value::of(strip(part, nullptr, false, true)));
        break;
      }
      for (; i < cs.size() && !python_space(cs[i]); ++i) part += cs[i];
      parts.push_back(Value::of(part));
    }
    return parts;
  }
  const std::string& sep = separator->string;
  if (sep.empty()) throw Error("empty separator");
  size_t from = 0;
  while (max_split < 0 || static_cast<int64_t>(parts.size()) < max_split) {
    const size_t at = s.find(sep, from);
    if (at == std::string::npos) break;
    parts.push_back(Value::of(s.substr(from, at - from)));
    from = at + sep.size();
  }
  parts.push_back(Value::of(s.substr(from)));
  return parts;
}

std::string replace(std::string s, const std::string& old, const std::string& with, int64_t count) {
  if (old.empty()) {
    std::string out;
    int64_t done = 0;
    for (const std::string& ch : utf8_chars(s)) {
      if (count < 0 || done < count) {
        out += with;
        ++done;
      }
      out += ch;
    }
    return (count < 0 || done < count) ? out + with : out;
  }
  std::string out;
  size_t from = 0;
  for (int64_t done = 0; count < 0 || done < count; ++done) {
    const size_t at = s.find(old, from);
    if (at == std::string::npos) break;
    out += s.substr(from, at - from) + with;
    from = at + old.size();
  }
  return out + s.substr(from);
}

// Python's slice indices for a sequence of `length`.
std::vector<int64_t> slice_indices(int64_t length, const Value& start, const Value& stop, const Value& step_value) {
  const int64_t step = step_value.is(Type::Undefined) || step_value.is(Type::None) ? 1 : integer(step_value);
  if (step == 0) throw Error("slice step cannot be zero");
  const auto clamp = [&](const Value& v, int64_t fallback) {
    if (v.is(Type::Undefined) || v.is(Type::None)) return fallback;
    int64_t i = integer(v);
    if (i < 0) i += length;
    return step > 0 ? std::clamp<int64_t>(i, 0, length) : std::clamp<int64_t>(i, -1, length - 1);
  };
  const int64_t begin = clamp(start, step > 0 ? 0 : length - 1), end = clamp(stop, step > 0 ? length : -1);
  std::vector<int64_t> indices;
  for (int64_t i = begin; step > 0 ? i < end : i > end; i += step) indices.push_back(i);
  return indices;
}

const Value* keyword_argument(CallArgs& args, const char* keyword);

// Argument `index`, or the one passed as `keyword`.
const Value* argument(CallArgs& args, size_t index, const char* keyword) {
  if (index < args.positional.size()) return &args.positional[index];
  return keyword_argument(args, keyword);
}

const Value* keyword_argument(CallArgs& args, const char* keyword) {
  for (const auto& [name, value] : args.keywords) {
    if (name == keyword) return &value;
  }
  return nullptr;
}

class Renderer {
 public:
  Renderer(const std::string& name, std::string* out, std::vector<OutputSpan>* generation)
      : name_(name), out_(out), generation_(generation) {
    scopes_.emplace_back();
    define_globals();
  }

  void set_variable(const std::string& key, Value value) { scopes_.front()[key] = std::move(value); }

  enum class Flow { Normal, Break, Continue };

  Flow run(const Body& body) {
    for (const Statement& statement : body) {
      const Flow flow = execute(statement);
      if (flow != Flow::Normal) return flow;
    }
    return Flow::Normal;
  }

 private:
  using Scope = std::unordered_map<std::string, Value>;

  [[noreturn]] void error(Position at, const std::string& message) const { fail(name_, at, message); }

  Value lookup(const std::string& key) const {
    for (auto scope = scopes_.rbegin(); scope != scopes_.rend(); ++scope) {
      const auto found = scope->find(key);
      if (found != scope->end()) return found->second;
    }
    return Value::undefined(key);
  }

  void define_globals() {
    Scope& globals = scopes_.front();
    globals["raise_exception"] = Value::of(Function([this](CallArgs& args) -> Value {
      const Value* message = argument(args, 0, "message");
      error(call_position_, "the template raised an exception: " + (message ? str(*message) : std::string()));
    }));
    globals["strftime_now"] = Value::of(Function([](CallArgs& args) {
      const Value* format = argument(args, 0, "format");
      const std::time_t now = std::time(nullptr);
      std::tm local{};
      localtime_r(&now, &local);
      char buffer[256];
      const size_t n = std::strftime(buffer, sizeof buffer, format ? str(*format).c_str() : "", &local);
      return Value::of(std::string(buffer, n));
    }));
    const auto keywords_object = [](CallArgs& args, bool is_namespace) {
      Value v = Value::of(Object{});
      v.is_namespace = is_namespace;
      if (!args.positional.empty() && args.positional[0].is(Type::Object)) *v.object = *args.positional[0].object;
      for (const auto& [key, value] : args.keywords) v.object->set(key, value);
      return v;
    };
    globals["namespace"] = Value::of(Function([keywords_object](CallArgs& args) { return keywords_object(args, true); }));
    globals["dict"] = Value::of(Function([keywords_object](CallArgs& args) { return keywords_object(args, false); }));
    globals["range"] = Value::of(Function([](CallArgs& args) {
      int64_t start = 0, stop = 0, step = 1;
      if (args.positional.size() == 1) {
        stop = integer(args.positional[0]);
      } else if (args.positional.size() >= 2) {
        start = integer(args.positional[0]);
        stop = integer(args.positional[1]);
        if (args.positional.size() > 2) step = integer(args.positional[2]);
      }
      if (step == 0) throw Error("range() step cannot be zero");
      // Jinja2's sandbox (transformers renders in one) refuses ranges above MAX_RANGE.
      constexpr int64_t kMaxRange = 100000;
      const double count = std::ceil((static_cast<double>(stop) - static_cast<double>(start)) / static_cast<double>(step));
      if (count > kMaxRange) {
        throw Error("range of " + std::to_string(static_cast<int64_t>(count)) + " items: the sandbox allows " + std::to_string(kMaxRange));
      }
      Array out;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.push_back(Value::of(i));
      return Value::of(std::move(out));
    }));
  }

  void write(const std::string& text) { *out_ += text; }

  // Output of `body` as a string (macro calls, set and filter blocks): spans not recorded.
  std::string capture(const Body& body) {
    std::string text;
    std::string* saved = out_;
    std::vector<OutputSpan>* saved_spans = generation_;
    out_ = &text;
    generation_ = nullptr;
    run(body);  // an error ends the whole render (templates cannot catch), so no restore on one
    out_ = saved;
    generation_ = saved_spans;
    return text;
  }

  void assign(const std::vector<std::string>& targets, const Value& value, Position at) {
    if (targets.size() == 1) {
      scopes_.back()[targets[0]] = value;
      return;
    }
    if (!value.is(Type::Array) || value.array->size() != targets.size()) {
      error(at, "cannot unpack " + std::string(type_name(value)) + " into " + std::to_string(targets.size()) + " names");
    }
    for (size_t i = 0; i < targets.size(); ++i) scopes_.back()[targets[i]] = (*value.array)[i];
  }

  Array iterate(const Value& v, Position at) const {
    switch (v.type) {
      case Type::Undefined: return {};
      case Type::Array: return *v.array;
      case Type::String: {
        Array out;
        for (const std::string& ch : utf8_chars(v.string)) out.push_back(Value::of(ch));
        return out;
      }
      case Type::Object: {
        Array out;
        for (const auto& entry : v.object->entries) out.push_back(Value::of(entry.first));
        return out;
      }
      default: error(at, std::string("'") + type_name(v) + "' object is not iterable");
    }
  }

  Flow execute(const Statement& s) {
    switch (s.kind) {
      case Statement::Kind::Text: write(s.text); break;
      case Statement::Kind::Output: write(str(evaluate(*s.expression))); break;
      case Statement::Kind::If:
        for (const auto& [condition, body] : s.branches) {
          if (!condition || truthy(evaluate(*condition))) return run(body);
        }
        break;
      case Statement::Kind::For: return run_for(s);
      case Statement::Kind::Set: {
        const Value value = evaluate(*s.expression);
        if (s.text.empty()) {
          assign(s.targets, value, s.position);
          break;
        }
        Value target = lookup(s.targets[0]);
        if (!target.is(Type::Object) || !target.is_namespace) {
          error(s.position, "cannot assign attribute '" + s.text + "' of '" + s.targets[0] + "': not a namespace()");
        }
        target.object->set(s.text, value);
        break;
      }
      case Statement::Kind::SetBlock: {
        Value value = Value::of(capture(s.body));
        for (const NodePtr& filter : s.filters) value = apply_filter(*filter, value);
        assign(s.targets, value, s.position);
        break;
      }
      case Statement::Kind::Macro: scopes_.back()[s.text] = make_macro(s); break;
      case Statement::Kind::CallBlock: {
        const Value caller = make_macro(s);
        scopes_.emplace_back();
        scopes_.back()["caller"] = caller;
        write(str(evaluate(*s.expression)));
        scopes_.pop_back();
        break;
      }
      case Statement::Kind::FilterBlock: {
        Value value = Value::of(capture(s.body));
        for (const NodePtr& filter : s.filters) value = apply_filter(*filter, value);
        write(str(value));
        break;
      }
      case Statement::Kind::Break: return Flow::Break;
      case Statement::Kind::Continue: return Flow::Continue;
      case Statement::Kind::Generation: {
        const size_t begin = out_->size();
        std::vector<OutputSpan>* spans = generation_;
        const Flow flow = run(s.body);
        if (spans && out_->size() > begin) spans->push_back({begin, out_->size()});
        return flow;
      }
    }
    return Flow::Normal;
  }

  Flow run_for(const Statement& s) {
    Array items = iterate(evaluate(*s.expression), s.expression->position);
    scopes_.emplace_back();
    if (s.condition) {
      Array kept;
      for (const Value& item : items) {
        assign(s.targets, item, s.position);
        if (truthy(evaluate(*s.condition))) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const auto n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      assign(s.targets, items[static_cast<size_t>(i)], s.position);
      scopes_.back()["loop"] = loop_object(items, i);
      if (run(s.body) == Flow::Break) break;
    }
    if (items.empty()) run(s.otherwise);
    scopes_.pop_back();
    return Flow::Normal;
  }

  static Value loop_object(const Array& items, int64_t i) {
    const auto n = static_cast<int64_t>(items.size());
    Object loop;
    loop.set("index", Value::of(i + 1));
    loop.set("index0", Value::of(i));
    loop.set("revindex", Value::of(n - i));
    loop.set("revindex0", Value::of(n - i - 1));
    loop.set("first", Value::of(i == 0));
    loop.set("last", Value::of(i == n - 1));
    loop.set("length", Value::of(n));
    loop.set("depth", Value::of(int64_t{1}));
    loop.set("depth0", Value::of(int64_t{0}));
    loop.set("previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("loop.previtem"));
    loop.set("nextitem", i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value::undefined("loop.nextitem"));
    loop.set("cycle", Value::of(Function([i](CallArgs& args) {
      if (args.positional.empty()) throw Error("loop.cycle() needs at least one value");
      return args.positional[static_cast<size_t>(i) % args.positional.size()];
    })));
    Value v = Value::of(std::move(loop));
    v.is_namespace = true;  // attribute access only, no dict methods
    return v;
  }

  // A macro (or a call block's caller): renders its body with the arguments bound.
  Value make_macro(const Statement& s) {
    const Statement* macro = &s;
    return Value::of(Function([this, macro](CallArgs& args) {
      if (macro_depth_ >= kMaxMacroDepth) {
        throw Error("macro calls nested " + std::to_string(kMaxMacroDepth) + " deep (a macro calling itself without end?)");
      }
      const struct Depth {
        int& depth;
        explicit Depth(int& d) : depth(++d) {}
        ~Depth() { --depth; }
      } depth(macro_depth_);
      Scope locals;
      for (size_t p = 0; p < macro->parameters.size(); ++p) {
        const auto& [parameter, default_value] = macro->parameters[p];
        const Value* given = argument(args, p, parameter.c_str());
        locals[parameter] = given ? *given : default_value ? evaluate(*default_value) : Value::undefined(parameter);
      }
      Array varargs;
      for (size_t p = macro->parameters.size(); p < args.positional.size(); ++p) varargs.push_back(args.positional[p]);
      locals["varargs"] = Value::of(std::move(varargs));
      std::vector<Scope> saved(scopes_.begin() + 1, scopes_.end());
      if (const Value caller = lookup("caller"); !caller.is(Type::Undefined)) locals.emplace("caller", caller);
      scopes_.resize(1);
      scopes_.push_back(std::move(locals));
      std::string text = capture(macro->body);
      scopes_.resize(1);
      scopes_.insert(scopes_.end(), saved.begin(), saved.end());
      return Value::of(std::move(text));
    }));
  }

  Value evaluate(const Node& node) {
    switch (node.kind) {
      case Node::Kind::Literal: return node.value;
      case Node::Kind::Name: return lookup(node.name);
      case Node::Kind::Attribute: return attribute(evaluate(*node.args[0]), node.name, node.position, /*subscript=*/false);
      case Node::Kind::Item: {
        const Value target = evaluate(*node.args[0]);
        const Value key = evaluate(*node.args[1]);
        return item(target, key, node.position);
      }
      case Node::Kind::Slice: return slice(node);
      case Node::Kind::Call: {
        const Value callee = evaluate(*node.args[0]);
        CallArgs args = arguments(node, 1);
        if (!callee.is(Type::Function)) error(node.position, "'" + std::string(type_name(callee)) + "' is not callable" + missing(callee));
        const Position saved = call_position_;
        call_position_ = node.position;
        try {
          Value result = (*callee.function)(args);
          call_position_ = saved;
          return result;
        } catch (const Error& e) {
          call_position_ = saved;
          const std::string what = e.what();
          if (what.rfind(name_ + ":", 0) == 0) throw;
          error(node.position, what);
        }
      }
      case Node::Kind::Filter: return apply_filter(node, evaluate(*node.args[0]));
      case Node::Kind::Test: {
        const bool result = apply_test(node);
        return Value::of(node.negated ? !result : result);
      }
      case Node::Kind::Unary: {
        const Value operand = evaluate(*node.args[0]);
        if (node.name == "not") return Value::of(!truthy(operand));
        if (!operand.is_number()) error(node.position, "bad operand type for unary " + node.name + ": '" + type_name(operand) + "'");
        if (node.name == "+") return operand;
        return integral(operand) ? Value::of(-integer(operand)) : Value::of(-operand.real);
      }
      case Node::Kind::Binary: return binary(node);
      case Node::Kind::Conditional:
        if (truthy(evaluate(*node.args[0]))) return evaluate(*node.args[1]);
        return node.args[2] ? evaluate(*node.args[2]) : Value::undefined("conditional");
      case Node::Kind::List:
      case Node::Kind::Tuple: {
        Array out;
        for (const NodePtr& arg : node.args) out.push_back(evaluate(*arg));
        return Value::of(std::move(out));
      }
      case Node::Kind::Dict: {
        Object out;
        for (size_t i = 0; i + 1 < node.args.size(); i += 2) {
          const Value key = evaluate(*node.args[i]);
          out.set(key.is(Type::String) ? key.string : str(key), evaluate(*node.args[i + 1]));
        }
        return Value::of(std::move(out));
      }
    }
    error(node.position, "unknown expression");
  }

  static std::string missing(const Value& v) { return v.is(Type::Undefined) ? " ('" + v.string + "' is undefined)" : ""; }

  CallArgs arguments(const Node& node, size_t first) {
    CallArgs args;
    for (size_t i = first; i < node.args.size(); ++i) args.positional.push_back(evaluate(*node.args[i]));
    for (const auto& [key, value] : node.keywords) args.keywords.emplace_back(key, evaluate(*value));
    return args;
  }

  Value item(const Value& target, const Value& key, Position at) {
    switch (target.type) {
      case Type::Array:
      case Type::String: {
        if (!key.is(Type::Int) && !key.is(Type::Bool)) {
          if (key.is(Type::String)) return attribute(target, key.string, at, /*subscript=*/true);
          error(at, std::string(type_name(target)) + " indices must be integers, not " + type_name(key));
        }
        const std::vector<std::string> chars = target.is(Type::String) ? utf8_chars(target.string) : std::vector<std::string>{};
        const auto n = static_cast<int64_t>(target.is(Type::String) ? chars.size() : target.array->size());
        int64_t i = integer(key);
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value::undefined(std::string(type_name(target)) + "[" + std::to_string(integer(key)) + "]");
        return target.is(Type::String) ? Value::of(chars[static_cast<size_t>(i)]) : (*target.array)[static_cast<size_t>(i)];
      }
      case Type::Object: {
        const std::string k = key.is(Type::String) ? key.string : str(key);
        if (const Value* found = target.object->find(k)) return *found;
        return Value::undefined(k);
      }
      case Type::Undefined: error(at, "'" + target.string + "' is undefined");
      default: return Value::undefined(str(key));
    }
  }

  Value slice(const Node& node) {
    const Value target = evaluate(*node.args[0]);
    const auto part = [&](size_t i) { return node.args[i] ? evaluate(*node.args[i]) : Value::none(); };
    const Value start = part(1), stop = part(2), step = part(3);
    if (target.is(Type::String)) {
      const std::vector<std::string> chars = utf8_chars(target.string);
      std::string out;
      for (const int64_t i : slice_indices(static_cast<int64_t>(chars.size()), start, stop, step)) out += chars[static_cast<size_t>(i)];
      return Value::of(std::move(out));
    }
    if (!target.is(Type::Array)) error(node.position, std::string("cannot slice '") + type_name(target) + "'" + missing(target));
    Array out;
    for (const int64_t i : slice_indices(static_cast<int64_t>(target.array->size()), start, stop, step)) {
      out.push_back((*target.array)[static_cast<size_t>(i)]);
    }
    return Value::of(std::move(out));
  }

  // obj.name: a str / dict method, else the dict's item (Jinja's getattr, then getitem);
  // obj[name] looks the item up first.
  Value attribute(const Value& target, const std::string& name, Position at, bool subscript) {
    if (target.is(Type::Undefined)) error(at, "'" + target.string + "' is undefined (looking up '" + name + "')");
    if (target.is(Type::Object)) {
      const Value* found = target.object->find(name);
      if (found && (subscript || target.is_namespace)) return *found;
      if (!target.is_namespace) {
        if (Value method = dict_method(target, name); !method.is(Type::Undefined)) return method;
      }
      return found ? *found : Value::undefined(name);
    }
    if (target.is(Type::String)) {
      if (Value method = string_method(target.string, name); !method.is(Type::Undefined)) return method;
    }
    if (!name.empty() && name.size() < 18 && std::all_of(name.begin(), name.end(), ::isdigit) && target.is(Type::Array)) {
      return item(target, Value::of(static_cast<int64_t>(std::stoll(name))), at);
    }
    return Value::undefined(name);
  }

  static Value dict_method(const Value& target, const std::string& name) {
    const std::shared_ptr<Object> object = target.object;
    if (name == "items" || name == "keys" || name == "values") {
      return Value::of(Function([object, name](CallArgs&) {
        Array out;
        for (const auto& [key, value] : object->entries) {
          out.push_back(name == "items" ? Value::of(Array{Value::of(key), value}) : name == "keys" ? Value::of(key) : value);
        }
        return Value::of(std::move(out));
      }));
    }
    if (name == "get") {
      return Value::of(Function([object](CallArgs& args) {
        const Value* key = argument(args, 0, "key");
        const Value* fallback = argument(args, 1, "default");
        const Value* found = key ? object->find(str(*key)) : nullptr;
        return found ? *found : fallback ? *fallback : Value::none();
      }));
    }
    return Value::undefined(name);
  }

  static Value string_method(const std::string& s, const std::string& name) {
    const auto method = [](auto body) { return Value::of(Function(body)); };
    if (name == "startswith" || name == "endswith") {
      const bool starts = name == "startswith";
      return method([s, starts](CallArgs& args) {
        const Value* affix = argument(args, 0, "prefix");
        if (!affix) throw Error("startswith / endswith need an argument");
        const auto matches = [&](const Value& v) {
          const std::string& a = v.string;
          return a.size() <= s.size() && (starts ? s.compare(0, a.size(), a) == 0 : s.compare(s.size() - a.size(), a.size(), a) == 0);
        };
        if (affix->is(Type::Array)) return Value::of(std::any_of(affix->array->begin(), affix->array->end(), matches));
        if (!affix->is(Type::String)) throw Error(std::string("startswith / endswith take a str, not ") + type_name(*affix));
        return Value::of(matches(*affix));
      });
    }
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      return method([s, name](CallArgs& args) {
        return Value::of(strip(s, argument(args, 0, "chars"), name != "rstrip", name != "lstrip"));
      });
    }
    if (name == "split") {
      return method([s](CallArgs& args) {
        const Value* limit = argument(args, 1, "maxsplit");
        return Value::of(split(s, argument(args, 0, "sep"), limit ? integer(*limit) : -1));
      });
    }
    if (name == "upper" || name == "lower") {
      return method([s, name](CallArgs&) { return Value::of(icu_case(s, name == "upper")); });
    }
    if (name == "title" || name == "capitalize") {
      return method([s, name](CallArgs&) { return Value::of(capitalize(s, name == "title")); });
    }
    if (name == "replace") {
      return method([s](CallArgs& args) {
        const Value* old = argument(args, 0, "old");
        const Value* with = argument(args, 1, "new");
        const Value* count = argument(args, 2, "count");
        if (!old || !with) throw Error("replace needs two arguments");
        return Value::of(replace(s, str(*old), str(*with), count ? integer(*count) : -1));
      });
    }
    if (name == "join") {
      return method([s](CallArgs& args) {
        const Value* items = argument(args, 0, "iterable");
        std::string out;
        if (items && items->is(Type::Array)) {
          for (size_t i = 0; i < items->array->size(); ++i) out += (i ? s : "") + str((*items->array)[i]);
        }
        return Value::of(std::move(out));
      });
    }
    if (name == "find" || name == "count") {
      return method([s, name](CallArgs& args) {
        const Value* sub = argument(args, 0, "sub");
        const std::string needle = sub ? str(*sub) : "";
        if (name == "find") {
          const size_t at = s.find(needle);
          return Value::of(at == std::string::npos ? int64_t{-1} : static_cast<int64_t>(utf8_chars(s.substr(0, at)).size()));
        }
        int64_t count = 0;
        for (size_t at = s.find(needle); at != std::string::npos && !needle.empty(); at = s.find(needle, at + needle.size())) ++count;
        return Value::of(count);
      });
    }
    return Value::undefined(name);
  }

  Value binary(const Node& node) {
    const std::string& op = node.name;
    const Value left = evaluate(*node.args[0]);
    if (op == "and") return truthy(left) ? evaluate(*node.args[1]) : left;
    if (op == "or") return truthy(left) ? left : evaluate(*node.args[1]);
    const Value right = evaluate(*node.args[1]);
    if (op == "==") return Value::of(equal(left, right));
    if (op == "!=") return Value::of(!equal(left, right));
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      const auto c = compare(left, right);
      if (!c) error(node.position, "'" + op + "' not supported between '" + type_name(left) + "' and '" + type_name(right) + "'");
      return Value::of(op == "<" ? *c < 0 : op == ">" ? *c > 0 : op == "<=" ? *c <= 0 : *c >= 0);
    }
    if (op == "in" || op == "not in") {
      bool found = false;
      if (right.is(Type::String)) {
        if (!left.is(Type::String)) error(node.position, std::string("'in <string>' needs a str on the left, not ") + type_name(left));
        found = right.string.find(left.string) != std::string::npos;
      } else if (right.is(Type::Array)) {
        found = std::any_of(right.array->begin(), right.array->end(), [&](const Value& v) { return equal(left, v); });
      } else if (right.is(Type::Object)) {
        found = left.is(Type::String) && right.object->find(left.string);
      } else if (!right.is(Type::Undefined)) {
        error(node.position, std::string("argument of type '") + type_name(right) + "' is not iterable");
      }
      return Value::of(op == "in" ? found : !found);
    }
    if (op == "~") return Value::of(str(left) + str(right));
    return arithmetic(op, left, right, node.position);
  }

  Value arithmetic(const std::string& op, const Value& a, const Value& b, Position at) {
    if (a.is(Type::Undefined) || b.is(Type::Undefined)) {
      error(at, "'" + (a.is(Type::Undefined) ? a.string : b.string) + "' is undefined (in '" + op + "')");
    }
    if (op == "+") {
      if (a.is(Type::String) && b.is(Type::String)) return Value::of(a.string + b.string);
      if (a.is(Type::Array) && b.is(Type::Array)) {
        Array out = *a.array;
        out.insert(out.end(), b.array->begin(), b.array->end());
        return Value::of(std::move(out));
      }
    }
    if (op == "*" && (a.is(Type::String) || a.is(Type::Array) || b.is(Type::String) || b.is(Type::Array))) {
      const Value& sequence = a.is(Type::String) || a.is(Type::Array) ? a : b;
      const Value& count = &sequence == &a ? b : a;
      if (integral(count)) {
        const int64_t n = std::max<int64_t>(0, integer(count));
        const double size = static_cast<double>(n) * static_cast<double>(sequence.is(Type::String) ? sequence.string.size() : sequence.array->size());
        if (size > kMaxRepeated) error(at, "repeating a " + std::string(type_name(sequence)) + " " + std::to_string(n) + " times is too large");
        if (sequence.is(Type::String)) {
          std::string out;
          for (int64_t i = 0; i < n; ++i) out += sequence.string;
          return Value::of(std::move(out));
        }
        Array out;
        for (int64_t i = 0; i < n; ++i) out.insert(out.end(), sequence.array->begin(), sequence.array->end());
        return Value::of(std::move(out));
      }
    }
    if (!a.is_number() || !b.is_number()) {
      error(at, "unsupported operand types for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
    }
    const bool ints = integral(a) && integral(b);
    const int64_t x = integer(a), y = integer(b);
    const double u = number(a), w = number(b);
    if ((op == "/" || op == "//" || op == "%") && (ints ? y == 0 : w == 0)) error(at, "division by zero");
    if (op == "+") return ints ? Value::of(x + y) : Value::of(u + w);
    if (op == "-") return ints ? Value::of(x - y) : Value::of(u - w);
    if (op == "*") return ints ? Value::of(x * y) : Value::of(u * w);
    if (op == "/") return Value::of(u / w);
    if (op == "//") {
      if (ints) return Value::of(static_cast<int64_t>(std::floor(static_cast<double>(x) / static_cast<double>(y))));
      return Value::of(std::floor(u / w));
    }
    if (op == "%") {
      if (ints) return Value::of(((x % y) + y) % y);
      return Value::of(u - w * std::floor(u / w));
    }
    if (op == "**") {
      // Exact while an int64 holds it (Python's ints are unbounded: beyond that, a float).
      if (ints && y >= 0 && std::fabs(std::pow(u, w)) < 9.0e18) {
        int64_t r = 1, base = x;  // squares stay below the result's magnitude
        for (int64_t e = y; e > 0;) {
          if (e & 1) r *= base;
          e >>= 1;
          if (e > 0) base *= base;
        }
        return Value::of(r);
      }
      return Value::of(std::pow(u, w));
    }
    error(at, "unknown operator " + op);
  }

  bool run_test(const std::string& test, const Value& v, const std::vector<Value>& args, Position at) {
    const auto arg = [&]() -> const Value& {
      if (args.empty()) error(at, "the test '" + test + "' needs an argument");
      return args[0];
    };
    if (test == "defined") return !v.is(Type::Undefined);
    if (test == "undefined") return v.is(Type::Undefined);
    if (test == "none") return v.is(Type::None);
    if (test == "boolean") return v.is(Type::Bool);
    if (test == "true") return v.is(Type::Bool) && v.boolean;
    if (test == "false") return v.is(Type::Bool) && !v.boolean;
    if (test == "string") return v.is(Type::String);
    if (test == "number") return v.is(Type::Int) || v.is(Type::Float);
    if (test == "integer") return v.is(Type::Int);
    if (test == "float") return v.is(Type::Float);
    if (test == "mapping") return v.is(Type::Object) && !v.is_namespace;
    if (test == "iterable") return v.is(Type::Array) || v.is(Type::String) || (v.is(Type::Object) && !v.is_namespace);
    if (test == "sequence") return v.is(Type::Array) || v.is(Type::String) || (v.is(Type::Object) && !v.is_namespace);
    if (test == "callable") return v.is(Type::Function);
    if (test == "odd" || test == "even") {
      if (!integral(v)) error(at, std::string("the test '") + test + "' needs an int, not " + type_name(v));
      return (integer(v) % 2 != 0) == (test == "odd");
    }
    if (test == "divisibleby") return integral(v) && integral(arg()) && integer(arg()) != 0 && integer(v) % integer(arg()) == 0;
    if (test == "eq" || test == "equalto" || test == "==") return equal(v, arg());
    if (test == "ne" || test == "!=") return !equal(v, arg());
    if (test == "lt" || test == "lessthan" || test == "<" || test == "le" || test == "<=" || test == "gt" ||
        test == "greaterthan" || test == ">" || test == "ge" || test == ">=") {
      const auto c = compare(v, arg());
      if (!c) error(at, std::string("cannot compare '") + type_name(v) + "' and '" + type_name(arg()) + "'");
      if (test == "lt" || test == "lessthan" || test == "<") return *c < 0;
      if (test == "le" || test == "<=") return *c <= 0;
      if (test == "gt" || test == "greaterthan" || test == ">") return *c > 0;
      return *c >= 0;
    }
    if (test == "in") {
      const Value& container = arg();
      if (container.is(Type::String)) return v.is(Type::String) && container.string.find(v.string) != std::string::npos;
      if (container.is(Type::Array)) return std::any_of(container.array->begin(), container.array->end(), [&](const Value& x) { return equal(v, x); });
      if (container.is(Type::Object)) return v.is(Type::String) && container.object->find(v.string);
      return false;
    }
    if (test == "lower" || test == "upper") return v.is(Type::String) && icu_case(v.string, test == "upper") == v.string;
    if (test == "sameas") {
      const Value& other = arg();
      if (v.type != other.type) return false;
      if (v.is(Type::Array)) return v.array == other.array;
      if (v.is(Type::Object)) return v.object == other.object;
      return equal(v, other);
    }
    error(at, "unknown test '" + test + "'");
  }

  bool apply_test(const Node& node) {
    const Value v = evaluate(*node.args[0]);
    std::vector<Value> args;
    for (size_t i = 1; i < node.args.size(); ++i) args.push_back(evaluate(*node.args[i]));
    return run_test(node.name, v, args, node.position);
  }

  // The attribute path "a.b" of an item (selectattr, map, sort, join, sum).
  Value item_attribute(const Value& v, const std::string& path, Position at) {
    Value current = v;
    size_t from = 0;
    while (true) {
      const size_t dot = path.find('.', from);
      const std::string part = path.substr(from, dot == std::string::npos ? std::string::npos : dot - from);
      current = current.is(Type::Undefined) ? current : attribute(current, part, at, /*subscript=*/true);
      if (dot == std::string::npos) return current;
      from = dot + 1;
    }
  }

  Value apply_filter(const Node& node, const Value& v) {
    CallArgs args = arguments(node, 1);
    const Position at = node.position;
    const std::string& f = node.name;
    const Value* a0 = argument(args, 0, "");
    const auto keyword = [&](size_t index, const char* name) { return argument(args, index, name); };
    const auto sequence = [&]() { return iterate(v, at); };
    if (f == "trim") return Value::of(strip(str(v), keyword(0, "chars"), true, true));
    if (f == "length" || f == "count") {
      if (v.is(Type::String)) return Value::of(static_cast<int64_t>(utf8_chars(v.string).size()));
      if (v.is(Type::Array)) return Value::of(static_cast<int64_t>(v.array->size()));
      if (v.is(Type::Object)) return Value::of(static_cast<int64_t>(v.object->entries.size()));
      if (v.is(Type::Undefined)) return Value::of(int64_t{0});
      error(at, std::string("object of type '") + type_name(v) + "' has no len()");
    }
    if (f == "default" || f == "d") {
      const Value* boolean = keyword(1, "boolean");
      const bool use_default = v.is(Type::Undefined) || (boolean && truthy(*boolean) && !truthy(v));
      const Value* fallback = keyword(0, "default_value");
      return use_default ? (fallback ? *fallback : Value::of(std::string())) : v;
    }
    if (f == "tojson") {
      JsonStyle style;
      if (const Value* indent = keyword(0, "indent"); indent && !indent->is(Type::None)) {
        style.indented = true;
        style.indent = indent->is(Type::String) ? indent->string : std::string(static_cast<size_t>(std::max<int64_t>(0, integer(*indent))), ' ');
        style.item_separator = ",";
      }
      if (const Value* separators = keyword_argument(args, "separators"); separators && separators->is(Type::Array) && separators->array->size() == 2) {
        style.item_separator = str((*separators->array)[0]);
        style.key_separator = str((*separators->array)[1]);
      }
      if (const Value* sort = keyword_argument(args, "sort_keys")) style.sort_keys = truthy(*sort);
      std::string out;
      if (!to_json(v, style, 0, &out)) error(at, std::string("tojson: a value of type '") + type_name(v) + "' is not JSON serializable");
      return Value::of(std::move(out));
    }
    if (f == "string") return Value::of(str(v));
    if (f == "upper" || f == "lower") return Value::of(icu_case(str(v), f == "upper"));
    if (f == "capitalize" || f == "title") return Value::of(capitalize(str(v), f == "title"));
    if (f == "replace") {
      const Value* old = keyword(0, "old");
      const Value* with = keyword(1, "new");
      const Value* count = keyword(2, "count");
      if (!old || !with) error(at, "replace needs two arguments");
      return Value::of(replace(str(v), str(*old), str(*with), count && !count->is(Type::None) ? integer(*count) : -1));
    }
    if (f == "safe" || f == "e" || f == "escape" || f == "forceescape") {
      if (f == "safe") return v;
      std::string out;
      for (const char c : str(v)) {
        switch (c) {
          case '&': out += "&amp;"; break;
          case '<': out += "&lt;"; break;
          case '>': out += "&gt;"; break;
          case '"': out += "&#34;"; break;
          case '\'': out += "&#39;"; break;
          default: out += c;
        }
      }
      return Value::of(std::move(out));
    }
    if (f == "int") {
      if (v.is(Type::String)) {
        try {
          return Value::of(static_cast<int64_t>(std::stoll(strip(v.string, nullptr, true, true))));
        } catch (const std::exception&) {
          return a0 ? *a0 : Value::of(int64_t{0});
        }
      }
      return v.is_number() ? Value::of(static_cast<int64_t>(number(v))) : (a0 ? *a0 : Value::of(int64_t{0}));
    }
    if (f == "float") {
      if (v.is(Type::String)) {
        try {
          return Value::of(std::stod(v.string));
        } catch (const std::exception&) {
          return a0 ? *a0 : Value::of(0.0);
        }
      }
      return v.is_number() ? Value::of(number(v)) : (a0 ? *a0 : Value::of(0.0));
    }
    if (f == "abs") {
      if (!v.is_number()) error(at, std::string("abs of '") + type_name(v) + "'");
      return integral(v) ? Value::of(std::abs(integer(v))) : Value::of(std::fabs(v.real));
    }
    if (f == "round") {
      const Value* precision = keyword(0, "precision");
      const double scale = std::pow(10.0, precision ? static_cast<double>(integer(*precision)) : 0.0);
      return Value::of(std::round(number(v) * scale) / scale);
    }
    if (f == "items") {
      if (v.is(Type::Undefined)) return Value::of(Array{});
      if (!v.is(Type::Object)) error(at, std::string("items of '") + type_name(v) + "'");
      return (*dict_method(v, "items").function)(args);
    }
    if (f == "list") return Value::of(sequence());
    if (f == "first" || f == "last") {
      const Array items = sequence();
      if (items.empty()) return Value::undefined(f);
      return f == "first" ? items.front() : items.back();
    }
    if (f == "reverse") {
      if (v.is(Type::String)) {
        std::vector<std::string> chars = utf8_chars(v.string);
        std::reverse(chars.begin(), chars.end());
        std::string out;
        for (const std::string& ch : chars) out += ch;
        return Value::of(std::move(out));
      }
      Array items = sequence();
      std::reverse(items.begin(), items.end());
      return Value::of(std::move(items));
    }
    if (f == "join") {
      const Value* separator = keyword(0, "d");
      const Value* attribute_name = keyword(1, "attribute");
      std::string out;
      const Array items = sequence();
      for (size_t i = 0; i < items.size(); ++i) {
        out += i ? (separator ? str(*separator) : "") : "";
        out += str(attribute_name ? item_attribute(items[i], str(*attribute_name), at) : items[i]);
      }
      return Value::of(std::move(out));
    }
    if (f == "unique") {
      Array out;
      for (const Value& x : sequence()) {
        if (std::none_of(out.begin(), out.end(), [&](const Value& y) { return equal(x, y); })) out.push_back(x);
      }
      return Value::of(std::move(out));
    }
    if (f == "sort" || f == "dictsort") {
      if (f == "dictsort" && !v.is(Type::Object)) error(at, std::string("dictsort of '") + type_name(v) + "'");
      Array items = f == "dictsort" ? *(*dict_method(v, "items").function)(args).array : sequence();
      const Value* reverse = f == "sort" ? argument(args, 0, "reverse") : keyword_argument(args, "reverse");
      const Value* attribute_name = keyword_argument(args, "attribute");
      const auto key = [&](const Value& x) {
        if (f == "dictsort") return (*x.array)[0];
        return attribute_name ? item_attribute(x, str(*attribute_name), at) : x;
      };
      std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
        const auto c = compare(key(x), key(y));
        if (!c) error(at, "sort: values that cannot be compared");
        return *c < 0;
      });
      if (reverse && truthy(*reverse)) std::reverse(items.begin(), items.end());
      return Value::of(std::move(items));
    }
    if (f == "min" || f == "max" || f == "sum") {
      const Array items = sequence();
      const Value* attribute_name = keyword_argument(args, "attribute");
      const auto key = [&](const Value& x) { return attribute_name ? item_attribute(x, str(*attribute_name), at) : x; };
      if (f == "sum") {
        const Value* start = keyword_argument(args, "start");
        Value total = start ? *start : Value::of(int64_t{0});
        for (const Value& x : items) total = arithmetic("+", total, key(x), at);
        return total;
      }
      if (items.empty()) return Value::undefined(f);
      Value best = items[0];
      for (const Value& x : items) {
        const auto c = compare(key(x), key(best));
        if (!c) error(at, f + ": values that cannot be compared");
        if ((f == "min" && *c < 0) || (f == "max" && *c > 0)) best = x;
      }
      return best;
    }
    if (f == "select" || f == "reject" || f == "selectattr" || f == "rejectattr") {
      const bool by_attribute = f == "selectattr" || f == "rejectattr";
      const bool keep_if = f == "select" || f == "selectattr";
      const size_t first_test = by_attribute ? 1 : 0;
      if (by_attribute && args.positional.empty()) error(at, f + " needs an attribute name");
      const std::string test = args.positional.size() > first_test ? str(args.positional[first_test]) : "";
      const std::vector<Value> test_args(args.positional.begin() + static_cast<std::ptrdiff_t>(std::min(args.positional.size(), first_test + 1)),
                                         args.positional.end());
      Array out;
      for (const Value& x : sequence()) {
        const Value subject = by_attribute ? item_attribute(x, str(args.positional[0]), at) : x;
        const bool passed = test.empty() ? truthy(subject) : run_test(test, subject, test_args, at);
        if (passed == keep_if) out.push_back(x);
      }
      return Value::of(std::move(out));
    }
    if (f == "map") {
      Array out;
      const Value* attribute_name = keyword_argument(args, "attribute");
      const Value* fallback = keyword_argument(args, "default");
      for (const Value& x : sequence()) {
        if (attribute_name) {
          Value mapped = item_attribute(x, str(*attribute_name), at);
          out.push_back(mapped.is(Type::Undefined) && fallback ? *fallback : mapped);
        } else {
          if (args.positional.empty()) error(at, "map needs a filter name or attribute=");
          Node call;
          call.kind = Node::Kind::Filter;
          call.position = at;
          call.name = str(args.positional[0]);
          call.args.push_back(nullptr);
          for (size_t i = 1; i < args.positional.size(); ++i) {
            auto literal = std::make_unique<Node>();
            literal->kind = Node::Kind::Literal;
            literal->value = args.positional[i];
            call.args.push_back(std::move(literal));
          }
          out.push_back(apply_filter(call, x));
        }
      }
      return Value::of(std::move(out));
    }
    if (f == "indent") {
      const Value* width = keyword(0, "width");
      const Value* first = keyword(1, "first");
      const Value* blank = keyword(2, "blank");
      const std::string pad = width && width->is(Type::String) ? width->string : std::string(static_cast<size_t>(width ? integer(*width) : 4), ' ');
      std::string text = str(v), out;
      size_t from = 0;
      bool first_line = true;
      while (true) {
        const size_t newline = text.find('\n', from);
        const std::string line = text.substr(from, newline == std::string::npos ? std::string::npos : newline - from);
        const bool indent_it = first_line ? (first && truthy(*first)) : (!line.empty() || (blank && truthy(*blank)));
        out += (indent_it ? pad : "") + line;
        if (newline == std::string::npos) break;
        out += '\n';
        from = newline + 1;
        first_line = false;
      }
      return Value::of(std::move(out));
    }
    if (f == "wordcount") return Value::of(static_cast<int64_t>(split(str(v), nullptr, -1).size()));
    error(at, "unknown filter '" + f + "'");
  }

  const std::string& name_;
  std::string* out_;
  std::vector<OutputSpan>* generation_;
  std::vector<Scope> scopes_;
  Position call_position_;
  static constexpr int kMaxMacroDepth = 100;
  static constexpr double kMaxRepeated = 1 << 26;  // items or bytes a `*` may make
  int macro_depth_ = 0;
};

}  // namespace

Template::Template(const std::string& source, std::string name)
    : name_(std::move(name)), program_(std::make_shared<Program>(parse_template(source, name_))) {}

Template::~Template() = default;

bool Template::has_generation_blocks() const { return program_->has_generation; }

std::string Template::render(const nlohmann::ordered_json& context, std::vector<OutputSpan>* generation) const {
  SHARDLORA_CHECK(context.is_object(), name_, ": the render context must be an object");
  std::string out;
  Renderer renderer(name_, &out, generation);
  for (const auto& [key, value] : context.items()) renderer.set_variable(key, from_json(value));
  try {
    renderer.run(program_->body);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // e.g. out of memory: still an error naming the template
    throw Error(name_ + ": rendering failed: " + e.what());
  }
  return out;
}

}  // namespace shardlora::data::jinja
