// The parsed form of a Jinja template (jinja_parse.cpp) and the values it computes with
// (jinja_render.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace shardlora::data::jinja {

struct Value;
using Array = std::vector<Value>;

// Python dict: insertion-ordered.
struct Object {
  std::vector<std::pair<std::string, Value>> entries;
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value value);
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keywords;
};
using Function = std::function<Value(CallArgs&)>;

struct Value {
  enum class Type { Undefined, None, Bool, Int, Float, String, Array, Object, Function };
  Type type = Type::Undefined;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0;
  std::string string;  // String; for Undefined, the name that was missing
  std::shared_ptr<Array> array;
  std::shared_ptr<Object> object;  // Object (a namespace too: assignable attributes)
  std::shared_ptr<Function> function;
  bool is_namespace = false;

  static Value none() { return make(Type::None); }
  static Value undefined(std::string name) {
    Value v = make(Type::Undefined);
    v.string = std::move(name);
    return v;
  }
  static Value of(bool b) {
    Value v = make(Type::Bool);
    v.boolean = b;
    return v;
  }
  static Value of(int64_t i) {
    Value v = make(Type::Int);
    v.integer = i;
    return v;
  }
  static Value of(double d) {
    Value v = make(Type::Float);
    v.real = d;
    return v;
  }
  static Value of(std::string s) {
    Value v = make(Type::String);
    v.string = std::move(s);
    return v;
  }
  static Value of(Array a) {
    Value v = make(Type::Array);
    v.array = std::make_shared<Array>(std::move(a));
    return v;
  }
  static Value of(Object o) {
    Value v = make(Type::Object);
    v.object = std::make_shared<Object>(std::move(o));
    return v;
  }
  static Value of(Function f) {
    Value v = make(Type::Function);
    v.function = std::make_shared<Function>(std::move(f));
    return v;
  }

  bool is(Type t) const { return type == t; }
  bool is_number() const { return type == Type::Int || type == Type::Float || type == Type::Bool; }

 private:
  static Value make(Type t) {
    Value v;
    v.type = t;
    return v;
  }
};

struct Position {
  int line = 1, column = 1;
};

struct Node;
using NodePtr = std::unique_ptr<Node>;

struct Node {
  enum class Kind {
    Literal,   // value
    Name,      // name
    Attribute, // args[0].name
    Item,      // args[0][args[1]]
    Slice,     // args[0][args[1]:args[2]:args[3]] (null parts absent)
    Call,      // args[0](args[1:], keywords)
    Filter,    // args[0] | name(args[1:], keywords); args[0] null in a filter block
    Test,      // args[0] is [not] name(args[1:])
    Unary,     // name ("-", "+", "not") args[0]
    Binary,    // args[0] name args[1]
    Conditional,  // args[1] if args[0] else args[2] (args[2] may be null)
    List,
    Tuple,
    Dict,      // keys and values alternate in args
  };
  Kind kind;
  Position position;
  Value value;
  std::string name;
  std::vector<NodePtr> args;
  std::vector<std::pair<std::string, NodePtr>> keywords;
  bool negated = false;
};

struct Statement;
using Body = std::vector<Statement>;

struct Statement {
  enum class Kind { Text, Output, If, For, Set, SetBlock, Macro, CallBlock, FilterBlock, Break, Continue, Generation };
  Statement(Kind k, Position at, std::string content = {}) : kind(k), position(at), text(std::move(content)) {}

  Kind kind;
  Position position;
  std::string text;                  // Text; Macro: its name; Set of an attribute: the attribute
  std::vector<std::string> targets;  // For / Set / SetBlock: the names assigned
  NodePtr expression;                // Output, For's iterable, Set's value, CallBlock's call
  NodePtr condition;                 // For's `if`
  std::vector<std::pair<NodePtr, Body>> branches;  // If / elif (a null condition: else)
  Body body, otherwise;              // For's else; FilterBlock: body filtered by `filters`
  std::vector<NodePtr> filters;
  std::vector<std::pair<std::string, NodePtr>> parameters;  // Macro / CallBlock caller: name, default
};

struct Program {
  Body body;
  bool has_generation = false;
};

// Throws Error("NAME:LINE:COL: message").
[[noreturn]] void fail(const std::string& name, Position position, const std::string& message);

Program parse_template(const std::string& source, const std::string& name);

}  // namespace shardlora::data::jinja
