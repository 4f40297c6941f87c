// Lexer and parser of the Jinja subset (see shardlora/data/jinja.h). Whitespace is handled
// as Jinja does with trim_blocks and lstrip_blocks: a block or comment tag alone on its line
// takes its indentation with it, and the newline after it; "-" strips all whitespace on its
// side, "+" turns lstrip_blocks off for one tag. Precedence follows Jinja's parser:
// conditional < or < and < not < comparisons / in < + - < ~ < * / // % < ** < unary, with
// filters, tests, calls, attributes and subscripts binding tightest.
#include <algorithm>
#include <set>

#include "jinja_ast.h"
#include "shardlora/data/utf8.h"
#include "shardlora/kernels/check.h"

namespace shardlora::data::jinja {

void fail(const std::string& name, Position position, const std::string& message) {
  throw Error(name + ":" + std::to_string(position.line) + ":" + std::to_string(position.column) + ": " + message);
}

namespace {

struct Token {
  enum class Type { Text, BeginOutput, BeginBlock, End, Name, String, Integer, Float, Operator, Eof };
  Type type;
  std::string text;
  Position position;
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_name_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool is_name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

class Lexer {
 public:
  Lexer(const std::string& source, const std::string& name) : source_(source), name_(name) {
    if (!source_.empty() && source_.back() == '\n') source_.pop_back();  // keep_trailing_newline=False
    line_starts_.push_back(0);
    for (size_t i = 0; i < source_.size(); ++i) {
      if (source_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  std::vector<Token> tokens() {
    bool strip_leading = false, trim_newline = false;
    size_t pos = 0;
    while (true) {
      size_t start = find_tag(pos);
      std::string text = source_.substr(pos, start - pos);
      size_t text_begin = pos;
      if (strip_leading) {
        const size_t keep = first_non_space(text);
        text_begin += keep;
        text.erase(0, keep);
      } else if (trim_newline && !text.empty() && text[0] == '\n') {
        text.erase(0, 1);
        ++text_begin;
      }
      if (start < source_.size()) {
        const char marker = source_[start + 1];
        const char modifier = start + 2 < source_.size() ? source_[start + 2] : '\0';
        if (modifier == '-') {
          while (!text.empty() && is_space(text.back())) text.pop_back();
        } else if (marker != '{' && modifier != '+') {
          const size_t line_start = text.find_last_of('\n');
          const size_t from = line_start == std::string::npos ? 0 : line_start + 1;
          // Only indentation since the line began (or the text began at a line start).
          const bool at_line_start = from > 0 || text_begin == 0 || source_[text_begin - 1] == '\n';
          if (at_line_start && text.find_first_not_of(" \t", from) == std::string::npos) text.erase(from);
        }
      }
      if (!text.empty()) out_.push_back({Token::Type::Text, text, position(text_begin)});
      if (start >= source_.size()) break;
      pos = lex_tag(start, &strip_leading, &trim_newline);
    }
    out_.push_back({Token::Type::Eof, "", position(source_.size())});
    return std::move(out_);
  }

 private:
  Position position(size_t offset) const {
    const auto line = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset) - line_starts_.begin();
    return {static_cast<int>(line), static_cast<int>(offset - line_starts_[static_cast<size_t>(line - 1)] + 1)};
  }

  size_t find_tag(size_t from) const {
    for (size_t i = source_.find('{', from); i != std::string::npos; i = source_.find('{', i + 1)) {
      if (i + 1 < source_.size() && (source_[i + 1] == '{' || source_[i + 1] == '%' || source_[i + 1] == '#')) return i;
    }
    return source_.size();
  }

  static size_t first_non_space(const std::string& text) {
    size_t i = 0;
    while (i < text.size() && is_space(text[i])) ++i;
    return i;
  }

  // One tag from `start` ("{{", "{%" or "{#"); returns where the text after it begins.
  size_t lex_tag(size_t start, bool* strip_leading, bool* trim_newline) {
    const char marker = source_[start + 1];
    size_t pos = start + 2;
    if (pos < source_.size() && (source_[pos] == '-' || source_[pos] == '+')) ++pos;
    if (marker == '#') {
      const size_t end = source_.find("#}", pos);
      if (end == std::string::npos) fail(name_, position(start), "the comment is not closed (no '#}')");
      *strip_leading = end > pos && source_[end - 1] == '-';
      *trim_newline = !(end > pos && source_[end - 1] == '+');
      return end + 2;
    }
    if (marker == '%' && starts_raw(pos)) return lex_raw(start, strip_leading, trim_newline);
    out_.push_back({marker == '{' ? Token::Type::BeginOutput : Token::Type::BeginBlock, "", position(start)});
    const std::string close = marker == '{' ? "}}" : "%}";
    int depth = 0;
    while (true) {
      while (pos < source_.size() && is_space(source_[pos])) ++pos;
      if (pos >= source_.size()) fail(name_, position(start), "the tag is not closed (no '" + close + "')");
      const bool modified_close = (source_[pos] == '-' || source_[pos] == '+') && source_.compare(pos + 1, 2, close) == 0;
      if (depth == 0 && (source_.compare(pos, 2, close) == 0 || modified_close)) {
        out_.push_back({Token::Type::End, "", position(pos)});
        *strip_leading = modified_close && source_[pos] == '-';
        *trim_newline = marker == '%' && !(modified_close && source_[pos] == '+');
        return pos + (modified_close ? 3 : 2);
      }
      pos = lex_token(pos, &depth);
    }
  }

  bool starts_raw(size_t pos) const {
    while (pos < source_.size() && is_space(source_[pos])) ++pos;
    return source_.compare(pos, 3, "raw") == 0 && pos + 3 < source_.size() && !is_name_char(source_[pos + 3]);
  }

  size_t lex_raw(size_t start, bool* strip_leading, bool* trim_newline) {
    const size_t open_end = source_.find("%}", start);
    if (open_end == std::string::npos) fail(name_, position(start), "the raw tag is not closed");
    for (size_t end = source_.find("{%", open_end); end != std::string::npos; end = source_.find("{%", end + 2)) {
      size_t p = end + 2;
      const bool strip = p < source_.size() && source_[p] == '-';
      if (strip || (p < source_.size() && source_[p] == '+')) ++p;
      while (p < source_.size() && is_space(source_[p])) ++p;
      if (source_.compare(p, 6, "endraw") != 0) continue;
      const size_t close = source_.find("%}", p);
      if (close == std::string::npos) break;
      std::string text = source_.substr(open_end + 2, end - open_end - 2);
      if (source_[open_end - 1] == '-') text.erase(0, first_non_space(text));
      if (strip) {
        while (!text.empty() && is_space(text.back())) text.pop_back();
      }
      if (!text.empty()) out_.push_back({Token::Type::Text, text, position(open_end + 2)});
      *strip_leading = source_[close - 1] == '-';
      *trim_newline = true;
      return close + 2;
    }
    fail(name_, position(start), "{% raw %} without {% endraw %}");
  }

  size_t lex_token(size_t pos, int* depth) {
    const Position at = position(pos);
    const char c = source_[pos];
    if (is_name_start(c)) {
      size_t end = pos;
      while (end < source_.size() && is_name_char(source_[end])) ++end;
      out_.push_back({Token::Type::Name, source_.substr(pos, end - pos), at});
      return end;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t end = pos;
      while (end < source_.size() && std::isdigit(static_cast<unsigned char>(source_[end]))) ++end;
      const bool real = end + 1 < source_.size() && source_[end] == '.' && std::isdigit(static_cast<unsigned char>(source_[end + 1])) &&
                        !(out_.back().type == Token::Type::Operator && out_.back().text == ".");
      if (real) {
        ++end;
        while (end < source_.size() && std::isdigit(static_cast<unsigned char>(source_[end]))) ++end;
      }
      out_.push_back({real ? Token::Type::Float : Token::Type::Integer, source_.substr(pos, end - pos), at});
      return end;
    }
    if (c == '\'' || c == '"') return lex_string(pos);
    static const char* const kOperators[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
                                             "=", "(", ")", "[", "]", "{", "}", ".", ",", ":", "|"};
    for (const char* op : kOperators) {
      const size_t length = std::char_traits<char>::length(op);
      if (source_.compare(pos, length, op) != 0) continue;
      if (*op == '{') ++*depth;
      if (*op == '}') --*depth;
      out_.push_back({Token::Type::Operator, op, at});
      return pos + length;
    }
    fail(name_, at, std::string("unexpected character '") + c + "'");
  }

  size_t lex_string(size_t pos) {
    const Position at = position(pos);
    const char quote = source_[pos++];
    std::string value;
    while (pos < source_.size() && source_[pos] != quote) {
      if (source_[pos] != '\\' || pos + 1 >= source_.size()) {
        value += source_[pos++];
        continue;
      }
      const char escaped = source_[pos + 1];
      pos += 2;
      switch (escaped) {
        case 'n': value += '\n'; break;
        case 't': value += '\t'; break;
        case 'r': value += '\r'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'v': value += '\v'; break;
        case '0': value += '\0'; break;
        case '\\': case '\'': case '"': value += escaped; break;
        case '\n': break;
        case 'x': case 'u': case 'U': {
          const size_t digits = escaped == 'x' ? 2 : escaped == 'u' ? 4 : 8;
          const std::string hex = source_.substr(pos, digits);
          if (hex.size() != digits || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
            fail(name_, at, std::string("bad \\") + escaped + " escape in a string");
          }
          value += utf8_encode(static_cast<uint32_t>(std::stoul(hex, nullptr, 16)));
          pos += digits;
          break;
        }
        default:  // Python keeps unknown escapes as written
          value += '\\';
          value += escaped;
      }
    }
    if (pos >= source_.size()) fail(name_, at, "the string is not closed");
    out_.push_back({Token::Type::String, value, at});
    return pos + 1;
  }

  std::string source_;
  const std::string& name_;
  std::vector<size_t> line_starts_;
  std::vector<Token> out_;
};

class Parser {
 public:
  // Deeper nesting than any real template has is refused, not a stack overflow.
  static constexpr int kMaxNesting = 200;

  Parser(std::vector<Token> tokens, const std::string& name) : tokens_(std::move(tokens)), name_(name) {}

  Program program() {
    Program program;
    program.body = body({});
    program.has_generation = has_generation_;
    return program;
  }

 private:
  using Type = Token::Type;

  const Token& peek(size_t ahead = 0) const { return tokens_[std::min(index_ + ahead, tokens_.size() - 1)]; }
  const Token& next() {
    const Token& token = tokens_[index_];
    if (index_ + 1 < tokens_.size()) ++index_;
    return token;
  }
  bool at_operator(const char* op) const { return peek().type == Type::Operator && peek().text == op; }
  bool at_name(const char* name) const { return peek().type == Type::Name && peek().text == name; }
  bool accept_operator(const char* op) {
    if (!at_operator(op)) return false;
    next();
    return true;
  }
  bool accept_name(const char* name) {
    if (!at_name(name)) return false;
    next();
    return true;
  }
  static std::string describe(const Token& token) {
    switch (token.type) {
      case Type::End: return "the end of the tag";
      case Type::Eof: return "the end of the template";
      case Type::Text: return "text";
      case Type::String: return "a string";
      default: return "'" + token.text + "'";
    }
  }
  void expect_operator(const char* op) {
    if (!accept_operator(op)) fail(name_, peek().position, std::string("expected '") + op + "', found " + describe(peek()));
  }
  std::string expect_name() {
    if (peek().type != Type::Name) fail(name_, peek().position, "expected a name, found " + describe(peek()));
    return next().text;
  }
  void expect_end() {
    if (peek().type != Type::End) fail(name_, peek().position, "expected the end of the tag, found " + describe(peek()));
    next();
  }

  // Statements until a block tag whose keyword is in `stops` (left unconsumed after "{%").
  Body body(const std::set<std::string>& stops) {
    Body out;
    while (true) {
      const Token& token = peek();
      if (token.type == Type::Eof) {
        if (!stops.empty()) fail(name_, token.position, "the template ends inside a block (expected {% " + *stops.rbegin() + " %})");
        return out;
      }
      if (token.type == Type::Text) {
        out.push_back(Statement{Statement::Kind::Text, token.position, token.text});
        next();
      } else if (token.type == Type::BeginOutput) {
        next();
        Statement output{Statement::Kind::Output, token.position};
        output.expression = expression();
        expect_end();
        out.push_back(std::move(output));
      } else if (token.type == Type::BeginBlock) {
        if (peek(1).type == Type::Name && stops.count(peek(1).text)) {
          next();
          return out;
        }
        next();
        out.push_back(statement());
      } else {
        fail(name_, token.position, "unexpected " + describe(token));
      }
    }
  }

  // After "{% keyword" of a closing tag: consume keyword and "%}".
  void close(const char* keyword) {
    if (!accept_name(keyword)) fail(name_, peek().position, std::string("expected {% ") + keyword + " %}");
    expect_end();
  }

  Statement statement() {
    const Position at = peek().position;
    const Nesting nesting(this, at);
    const std::string keyword = expect_name();
    Statement s{Statement::Kind::Text, at};
    if (keyword == "if") {
      s.kind = Statement::Kind::If;
      NodePtr condition = expression();
      expect_end();
      while (true) {
        Body branch = body({"elif", "else", "endif"});
        s.branches.emplace_back(std::move(condition), std::move(branch));
        if (accept_name("elif")) {
          condition = expression();
          expect_end();
        } else if (accept_name("else")) {
          expect_end();
          s.branches.emplace_back(nullptr, body({"endif"}));
          close("endif");
          break;
        } else {
          close("endif");
          break;
        }
      }
    } else if (keyword == "for") {
      s.kind = Statement::Kind::For;
      s.targets = target_names();
      if (!accept_name("in")) fail(name_, peek().position, "expected 'in' in the for statement");
      s.expression = conditional(/*allow_condition=*/false);
      if (accept_name("if")) s.condition = or_expression();
      if (accept_name("recursive")) fail(name_, at, "recursive for loops are not supported");
      expect_end();
      s.body = body({"else", "endfor"});
      if (accept_name("else")) {
        expect_end();
        s.otherwise = body({"endfor"});
      }
      close("endfor");
    } else if (keyword == "set") {
      s.targets = target_names();
      if (accept_operator(".")) {
        if (s.targets.size() != 1) fail(name_, at, "cannot assign to an attribute of several names");
        s.text = expect_name();
      }
      if (accept_operator("=")) {
        s.kind = Statement::Kind::Set;
        s.expression = tuple_or_expression();
        expect_end();
      } else {
        if (!s.text.empty()) fail(name_, at, "a {% set %} block cannot assign to an attribute");
        s.kind = Statement::Kind::SetBlock;
        while (accept_operator("|")) s.filters.push_back(filter(nullptr));
        expect_end();
        s.body = body({"endset"});
        close("endset");
      }
    } else if (keyword == "macro") {
      s.kind = Statement::Kind::Macro;
      s.text = expect_name();
      s.parameters = parameter_list();
      expect_end();
      s.body = body({"endmacro"});
      close("endmacro");
    } else if (keyword == "call") {
      s.kind = Statement::Kind::CallBlock;
      if (at_operator("(")) s.parameters = parameter_list();
      s.expression = expression();
      if (s.expression->kind != Node::Kind::Call) fail(name_, at, "{% call %} needs a macro call");
      expect_end();
      s.body = body({"endcall"});
      close("endcall");
    } else if (keyword == "filter") {
      s.kind = Statement::Kind::FilterBlock;
      do {
        s.filters.push_back(filter(nullptr));
      } while (accept_operator("|"));
      expect_end();
      s.body = body({"endfilter"});
      close("endfilter");
    } else if (keyword == "generation") {
      s.kind = Statement::Kind::Generation;
      has_generation_ = true;
      expect_end();
      s.body = body({"endgeneration"});
      close("endgeneration");
    } else if (keyword == "break" || keyword == "continue") {
      s.kind = keyword == "break" ? Statement::Kind::Break : Statement::Kind::Continue;
      expect_end();
    } else if (keyword.rfind("end", 0) == 0 || keyword == "elif" || keyword == "else") {
      fail(name_, at, "unexpected '{% " + keyword + " %}' (no block it closes is open)");
    } else {
      fail(name_, at, "unknown statement '" + keyword + "'");
    }
    return s;
  }

  std::vector<std::string> target_names() {
    std::vector<std::string> names;
    const bool parenthesized = accept_operator("(");
    do {
      names.push_back(expect_name());
    } while (accept_operator(","));
    if (parenthesized) expect_operator(")");
    return names;
  }

  std::vector<std::pair<std::string, NodePtr>> parameter_list() {
    std::vector<std::pair<std::string, NodePtr>> parameters;
    expect_operator("(");
    while (!accept_operator(")")) {
      std::string parameter = expect_name();
      NodePtr default_value = accept_operator("=") ? expression() : nullptr;
      parameters.emplace_back(std::move(parameter), std::move(default_value));
      if (!at_operator(")")) expect_operator(",");
    }
    return parameters;
  }

  NodePtr make(Node::Kind kind, Position at, std::string name = {}) {
    auto node = std::make_unique<Node>();
    node->kind = kind;
    node->position = at;
    node->name = std::move(name);
    return node;
  }

  // `a, b` without brackets is a tuple (set x = 1, 2).
  NodePtr tuple_or_expression() {
    const Position at = peek().position;
    NodePtr first = expression();
    if (!at_operator(",")) return first;
    NodePtr tuple = make(Node::Kind::Tuple, at);
    tuple->args.push_back(std::move(first));
    while (accept_operator(",")) {
      if (peek().type == Type::End) break;
      tuple->args.push_back(expression());
    }
    return tuple;
  }

  NodePtr expression() {
    const Nesting nesting(this, peek().position);
    return conditional(true);
  }

  NodePtr conditional(bool allow_condition) {
    NodePtr value = or_expression();
    while (allow_condition && at_name("if")) {
      const Position at = next().position;
      NodePtr node = make(Node::Kind::Conditional, at);
      node->args.push_back(or_expression());
      node->args.push_back(std::move(value));
      node->args.push_back(accept_name("else") ? conditional(true) : nullptr);
      value = std::move(node);
    }
    return value;
  }

  NodePtr binary(std::string op, Position at, NodePtr left, NodePtr right) {
    NodePtr node = make(Node::Kind::Binary, at, std::move(op));
    node->args.push_back(std::move(left));
    node->args.push_back(std::move(right));
    return node;
  }

  NodePtr or_expression() {
    NodePtr left = and_expression();
    while (at_name("or")) {
      const Position at = next().position;
      left = binary("or", at, std::move(left), and_expression());
    }
    return left;
  }

  NodePtr and_expression() {
    NodePtr left = not_expression();
    while (at_name("and")) {
      const Position at = next().position;
      left = binary("and", at, std::move(left), not_expression());
    }
    return left;
  }

  NodePtr not_expression() {
    const Nesting nesting(this, peek().position);
    if (at_name("not")) {
      const Position at = next().position;
      NodePtr node = make(Node::Kind::Unary, at, "not");
      node->args.push_back(not_expression());
      return node;
    }
    return comparison();
  }

  NodePtr comparison() {
    NodePtr left = additive();
    while (true) {
      const Position at = peek().position;
      std::string op;
      if (peek().type == Type::Operator && (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
                                            peek().text == ">" || peek().text == "<=" || peek().text == ">=")) {
        op = next().text;
      } else if (at_name("in")) {
        next();
        op = "in";
      } else if (at_name("not") && peek(1).type == Type::Name && peek(1).text == "in") {
        next();
        next();
        op = "not in";
      } else {
        return left;
      }
      left = binary(op, at, std::move(left), additive());
    }
  }

  template <typename Next>
  NodePtr left_associative(std::initializer_list<const char*> ops, Next next_level) {
    NodePtr left = (this->*next_level)();
    while (true) {
      const char* found = nullptr;
      for (const char* op : ops) found = found ? found : (at_operator(op) ? op : nullptr);
      if (!found) return left;
      const Position at = next().position;
      left = binary(found, at, std::move(left), (this->*next_level)());
    }
  }
  NodePtr additive() { return left_associative({"+", "-"}, &Parser::concatenation); }
  NodePtr concatenation() { return left_associative({"~"}, &Parser::multiplicative); }
  NodePtr multiplicative() { return left_associative({"*", "/", "//", "%"}, &Parser::power); }
  NodePtr power() { return left_associative({"**"}, &Parser::signed_operand); }
  NodePtr signed_operand() { return unary(); }

  // Jinja's parse_unary: a sign applies to the operand with its attributes and subscripts,
  // and filters and tests then apply to the signed value (-3|abs is 3).
  NodePtr unary(bool with_filters = true) {
    const Nesting nesting(this, peek().position);
    NodePtr node;
    if (at_operator("-") || at_operator("+")) {
      const Token& op = next();
      node = make(Node::Kind::Unary, op.position, op.text);
      node->args.push_back(unary(/*with_filters=*/false));
    } else {
      node = primary();
    }
    node = postfix(std::move(node));
    return with_filters ? filters_and_tests(std::move(node)) : std::move(node);
  }

  // Attributes, subscripts and calls after a primary.
  NodePtr postfix(NodePtr node) {
    while (true) {
      const Position at = peek().position;
      if (accept_operator(".")) {
        NodePtr attribute = make(Node::Kind::Attribute, at, peek().type == Type::Integer ? next().text : expect_name());
        attribute->args.push_back(std::move(node));
        node = std::move(attribute);
      } else if (accept_operator("[")) {
        node = subscript(std::move(node), at);
      } else if (at_operator("(")) {
        node = call(std::move(node), at);
      } else {
        return node;
      }
    }
  }

  NodePtr call(NodePtr callee, Position at) {
    NodePtr node = make(Node::Kind::Call, at);
    node->args.push_back(std::move(callee));
    arguments(node.get());
    return node;
  }

  NodePtr filters_and_tests(NodePtr node) {
    while (true) {
      const Position at = peek().position;
      if (accept_operator("|")) {
        node = filter(std::move(node));
      } else if (at_name("is")) {
        next();
        NodePtr test = make(Node::Kind::Test, at);
        test->negated = accept_name("not");
        test->name = expect_name();
        test->args.push_back(std::move(node));
        if (at_operator("(")) {
          arguments(test.get());
        } else if (peek().type == Type::String || peek().type == Type::Integer || peek().type == Type::Float ||
                   (peek().type == Type::Name && !is_keyword(peek().text))) {
          test->args.push_back(postfix(primary()));
        }
        node = std::move(test);
      } else if (at_operator("(")) {
        node = call(std::move(node), at);
      } else {
        return node;
      }
    }
  }

  static bool is_keyword(const std::string& word) {
    static const std::set<std::string> keywords = {"and", "or", "not", "in", "is", "if", "else", "recursive"};
    return keywords.count(word) > 0;
  }

  NodePtr subscript(NodePtr target, Position at) {
    NodePtr parts[3];
    bool slice = false;
    for (int part = 0; part < 3; ++part) {
      if (!at_operator(":") && !at_operator("]")) parts[part] = expression();
      if (part < 2 && accept_operator(":")) {
        slice = true;
        continue;
      }
      break;
    }
    expect_operator("]");
    if (!slice) {
      if (!parts[0]) fail(name_, at, "empty subscript");
      NodePtr item = make(Node::Kind::Item, at);
      item->args.push_back(std::move(target));
      item->args.push_back(std::move(parts[0]));
      return item;
    }
    NodePtr node = make(Node::Kind::Slice, at);
    node->args.push_back(std::move(target));
    for (NodePtr& part : parts) node->args.push_back(std::move(part));
    return node;
  }

  // "(a, b, key=c)" into node->args / keywords.
  void arguments(Node* node) {
    expect_operator("(");
    while (!accept_operator(")")) {
      if (peek().type == Type::Name && peek(1).type == Type::Operator && peek(1).text == "=") {
        std::string keyword = next().text;
        next();
        node->keywords.emplace_back(std::move(keyword), expression());
      } else {
        if (!node->keywords.empty()) fail(name_, peek().position, "a positional argument after keyword arguments");
        node->args.push_back(expression());
      }
      if (!at_operator(")")) expect_operator(",");
    }
  }

  NodePtr filter(NodePtr operand) {
    const Position at = peek().position;
    std::string filter_name = expect_name();
    while (accept_operator(".")) filter_name += "." + expect_name();
    NodePtr node = make(Node::Kind::Filter, at, filter_name);
    node->args.push_back(std::move(operand));
    if (at_operator("(")) arguments(node.get());
    return node;
  }

  NodePtr primary() {
    const Token& token = next();
    const Position at = token.position;
    NodePtr node = make(Node::Kind::Literal, at);
    switch (token.type) {
      case Type::String: {
        std::string text = token.text;
        while (peek().type == Type::String) text += next().text;  // adjacent literals join
        node->value = Value::of(std::move(text));
        return node;
      }
      case Type::Integer:
      case Type::Float:
        try {
          node->value = token.type == Type::Integer ? Value::of(static_cast<int64_t>(std::stoll(token.text))) : Value::of(std::stod(token.text));
        } catch (const std::out_of_range&) {
          fail(name_, at, "the number " + token.text + " is out of range");
        }
        return node;
      case Type::Name:
        if (token.text == "true" || token.text == "True") {
          node->value = Value::of(true);
        } else if (token.text == "false" || token.text == "False") {
          node->value = Value::of(false);
        } else if (token.text == "none" || token.text == "None") {
          node->value = Value::none();
        } else {
          node->kind = Node::Kind::Name;
          node->name = token.text;
        }
        return node;
      case Type::Operator:
        if (token.text == "(") return parenthesized(at);
        if (token.text == "[") {
          node->kind = Node::Kind::List;
          while (!accept_operator("]")) {
            node->args.push_back(expression());
            if (!at_operator("]")) expect_operator(",");
          }
          return node;
        }
        if (token.text == "{") {
          node->kind = Node::Kind::Dict;
          while (!accept_operator("}")) {
            node->args.push_back(expression());
            expect_operator(":");
            node->args.push_back(expression());
            if (!at_operator("}")) expect_operator(",");
          }
          return node;
        }
        break;
      default:
        break;
    }
    fail(name_, at, "expected an expression, found " + describe(token));
  }

  NodePtr parenthesized(Position at) {
    if (accept_operator(")")) return make(Node::Kind::Tuple, at);
    NodePtr first = expression();
    if (accept_operator(")")) return first;
    NodePtr tuple = make(Node::Kind::Tuple, at);
    tuple->args.push_back(std::move(first));
    while (accept_operator(",")) {
      if (at_operator(")")) break;
      tuple->args.push_back(expression());
    }
    expect_operator(")");
    return tuple;
  }

  // One level of nested statements or expressions, for the duration of its parse.
  class Nesting {
   public:
    Nesting(Parser* parser, Position at) : parser_(parser) {
      if (++parser_->depth_ > kMaxNesting) fail(parser_->name_, at, "nested more than " + std::to_string(kMaxNesting) + " levels deep");
    }
    ~Nesting() { --parser_->depth_; }

   private:
    Parser* parser_;
  };

  std::vector<Token> tokens_;
  const std::string& name_;
  size_t index_ = 0;
  int depth_ = 0;
  bool has_generation_ = false;
};

}  // namespace

Program parse_template(const std::string& source, const std::string& name) {
  return Parser(Lexer(source, name).tokens(), name).program();
}

}  // namespace shardlora::data::jinja
