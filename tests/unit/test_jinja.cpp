// The Jinja subset against what Jinja2 renders under transformers' settings (trim_blocks,
// lstrip_blocks, loop controls, no autoescape): whitespace control, Python value semantics,
// scoping, statements, filters, tests, methods, generation spans and errors with line and
// column. The renders of real chat templates are compared with Hugging Face's own renderer in
// tests/integration/test_chat_template_parity.cpp.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "shardlora/data/jinja.h"
#include "shardlora/kernels/check.h"

using namespace shardlora;
using data::jinja::Template;
using Json = nlohmann::ordered_json;

namespace {

std::string render(const std::string& source, const Json& context = Json::object()) {
  return Template(source, "t.jinja").render(context);
}

std::string error_of(const std::string& source, const Json& context = Json::object()) {
  try {
    render(source, context);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST(Jinja, BlockTagsAloneOnTheirLineLeaveNoWhitespace) {
  // lstrip_blocks takes the indentation before {% and trim_blocks the newline after %}.
  EXPECT_EQ(render("{% for x in xs %}\n  {% if x %}\n  <{{ x }}>\n  {% endif %}\n{% endfor %}\n", {{"xs", {1, 0, 2}}}),
            "  <1>\n  <2>\n");
  // Not for expressions, nor for a block tag after text on its line.
  EXPECT_EQ(render("a {% if true %}b{% endif %}\n{{ 1 }}\nc"), "a b1\nc");
  EXPECT_EQ(render("  {{ 'x' }}  \n"), "  x  ");  // only the template's single trailing newline goes
  // "-" strips every whitespace on its side, "+" keeps the indentation.
  EXPECT_EQ(render("a  \n  {%- if true -%}  \n  b  {{- ' c ' -}}  d{% endif %}"), "ab c d");
  EXPECT_EQ(render("x\n  {%+ if true %}y{% endif %}"), "x\n  y");
  EXPECT_EQ(render("a{# note #}\nb {#- trimmed -#}  c"), "abc");
  EXPECT_EQ(render("{% raw %}{{ not rendered }}{% endraw %}"), "{{ not rendered }}");
}

TEST(Jinja, ValuesPrintAndBehaveAsInPython) {
  EXPECT_EQ(render("{{ none }}|{{ true }}|{{ 1.0 }}|{{ 2.5 if false else 0.1 + 0.2 }}|{{ [1, 'a', none] }}|{{ {'k': 'v'} }}"),
            "None|True|1.0|0.30000000000000004|[1, 'a', None]|{'k': 'v'}");
  EXPECT_EQ(render("{{ undefined_name }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 7 / 2 }}|{{ 2 ** 10 }}|{{ 'ab' * 2 }}"),
            "|3|-4|2|3.5|1024|abab");
  EXPECT_EQ(render("{{ 1 ~ 'a' ~ none }}|{{ [1] + [2] }}|{{ 'a' < 'b' }}|{{ 1 == 1.0 }}|{{ -3 | abs }}"), "1aNone|[1, 2]|True|True|3");
  // Empty containers and zero are false; `and` / `or` give an operand back.
  EXPECT_EQ(render("{{ [] or 'empty' }}|{{ 'x' and 'y' }}|{{ 0 or '' or 'z' }}|{% if {} %}t{% else %}f{% endif %}"), "empty|y|z|f");
  EXPECT_EQ(render("{{ 'é' | length }}|{{ 'naïve'[2] }}|{{ 'héllo'[1:3] }}|{{ [1, 2, 3][::-1] }}|{{ [1, 2, 3][-1] }}"),
            "1|ï|él|[3, 2, 1]|3");
  EXPECT_EQ(render("{{ 'ß'.upper() }}|{{ 'ÉTÉ' | lower }}|{{ 'hello world' | title }}|{{ 'hELLO' | capitalize }}"), "SS|été|Hello World|Hello");
}

TEST(Jinja, AssignmentsInLoopsStayThereNamespacesCarryThemOut) {
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [1, 2] %}{% set x = i %}{% endfor %}{{ x }}"), "1");
  EXPECT_EQ(render("{% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }}"), "2");
  EXPECT_EQ(render("{% set ns = namespace(total=0) %}{% for i in [1, 2, 3] %}{% set ns.total = ns.total + i %}{% endfor %}{{ ns.total }}"), "6");
  EXPECT_EQ(render("{% set a, b = [1, 2] %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(render("{% set block | upper %}x{{ 1 }}{% endset %}{{ block }}"), "X1");
  EXPECT_NE(error_of("{% set x = 1 %}{% set x.y = 2 %}").find("t.jinja:1:19: cannot assign attribute 'y' of 'x': not a namespace()"),
            std::string::npos)
      << error_of("{% set x = 1 %}{% set x.y = 2 %}");
}

TEST(Jinja, LoopsHaveJinjasLoopVariablesFiltersElseAndControls) {
  EXPECT_EQ(render("{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ x }}"
                   "{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %}{{ loop.length }}"
                   "{{ loop.previtem | default('-') }}{{ loop.cycle('o', 'e') }} {% endfor %}"),
            "103aF3-o 212b3ae 321cL3bo ");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}/{{ loop.length }} {% endfor %}"), "2/2 4/2 ");
  EXPECT_EQ(render("{% for x in [] %}{{ x }}{% else %}none{% endfor %}"), "none");
  EXPECT_EQ(render("{% for x in range(10) %}{% if x == 4 %}{% break %}{% endif %}{% if x is odd %}{% continue %}{% endif %}{{ x }}{% endfor %}"),
            "02");
  EXPECT_EQ(render("{% for k, v in {'b': 1, 'a': 2}.items() %}{{ k }}{{ v }}{% endfor %}|{% for k in {'z': 0, 'y': 1} %}{{ k }}{% endfor %}"),
            "b1a2|zy");
}

TEST(Jinja, MacrosCallBlocksAndFilterBlocks) {
  EXPECT_EQ(render("{% macro tag(name, open=true) %}<{{ '' if open else '/' }}{{ name }}>{% endmacro %}{{ tag('a') }}{{ tag('a', open=false) }}"),
            "<a></a>");
  EXPECT_EQ(render("{% macro box() %}[{{ caller() }}]{% endmacro %}{% call box() %}inside{% endcall %}"), "[inside]");
  EXPECT_EQ(render("{% filter upper %}shout {{ 'this' }}{% endfilter %}"), "SHOUT THIS");
}

TEST(Jinja, FiltersTestsAndMethodsChatTemplatesUse) {
  const Json context = {{"messages", Json::array({{{"role", "system"}, {"content", "  Be brief.  "}},
                                                  {{"role", "user"}, {"content", "Hi there"}},
                                                  {{"role", "assistant"}, {"content", "<think>\nhm\n</think>\n\nHello"}}})}};
  EXPECT_EQ(render("{{ messages | map(attribute='role') | join(', ') }}|{{ messages | selectattr('role', 'equalto', 'user') | list | length }}|"
                   "{{ messages | rejectattr('role', 'in', ['system']) | map(attribute='role') | first }}|{{ messages[0].content | trim }}",
                   context),
            "system, user, assistant|1|user|Be brief.");
  EXPECT_EQ(render("{%- set c = messages[2].content %}{{ c.split('</think>')[-1].lstrip('\\n') }}|"
                   "{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}|"
                   "{{ c.startswith('<think>') }}{{ c.endswith(('x', 'lo')) }}{{ '</think>' in c }}",
                   context),
            "Hello|hm|TrueTrueTrue");
  EXPECT_EQ(render("{{ {'name': 'f', 'n': [1, 2.5, none, true], 's': 'a\"é\\n'} | tojson }}"),
            "{\"name\": \"f\", \"n\": [1, 2.5, null, true], \"s\": \"a\\\"é\\n\"}");
  EXPECT_EQ(render("{{ {'a': [1, {}], 'b': []} | tojson(indent=2) }}"), "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}");
  EXPECT_EQ(render("{{ x | default('d') }}{{ '' | default('e', true) }}{{ none is none }}{{ 1 is not string }}{{ {} is mapping }}"
                   "{{ [] is iterable }}{{ 6 is divisibleby 3 }}{{ x is defined }}{{ 'a' is in 'cat' }}"),
            "deTrueTrueTrueTrueTrueFalseTrue");
  EXPECT_EQ(render("{{ 'a-b-c'.replace('-', '+', 1) }}|{{ 'a b  c'.split() }}|{{ 'x,y'.split(',', 1) }}|{{ ', '.join(['p', 'q']) }}|"
                   "{{ [3, 1, 2] | sort(reverse=true) | join }}|{{ [1, 1, 2] | unique | list }}|{{ 'l1\\nl2' | indent(2, true) }}|"
                   "{{ {'b': 1, 'a': 2} | dictsort | first | first }}|{{ [1, 2, 3] | sum }}|{{ {'k': 1}.get('k') }}{{ {'k': 1}.get('z', 0) }}"),
            "a+b-c|['a', 'b', 'c']|['x', 'y']|p, q|321|[1, 2]|  l1\n  l2|a|6|10");
}

TEST(Jinja, GenerationBlocksReportTheirSpans) {
  const Template t("{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}</s>"
                   "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}",
                   "gen.jinja");
  EXPECT_TRUE(t.has_generation_blocks());
  std::vector<data::jinja::OutputSpan> spans;
  const std::string out = t.render({{"messages", Json::array({{{"role", "user"}, {"content", "q"}}, {{"role", "assistant"}, {"content", "a"}},
                                                              {{"role", "user"}, {"content", "r"}}, {{"role", "assistant"}, {"content", "b"}}})}},
                                   &spans);
  EXPECT_EQ(out, "<user>q<assistant>a</s><user>r<assistant>b</s>");
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(out.substr(spans[0].begin, spans[0].end - spans[0].begin), "a</s>");
  EXPECT_EQ(out.substr(spans[1].begin, spans[1].end - spans[1].begin), "b</s>");
  EXPECT_FALSE(Template("{{ 1 }}", "plain").has_generation_blocks());
}

TEST(Jinja, ErrorsNameTheTemplateLineAndColumn) {
  const auto expect_error = [](const std::string& source, const std::string& expected, const Json& context = Json::object()) {
    const std::string error = error_of(source, context);
    EXPECT_NE(error.find(expected), std::string::npos) << source << "\n  gave: " << error;
  };
  expect_error("line one\n{{ x +\n}}", "t.jinja:3:1: expected an expression, found the end of the tag");
  expect_error("{% if x %}\nno end", "t.jinja:2:7: the template ends inside a block (expected {% endif %})");
  expect_error("{% endfor %}", "t.jinja:1:4: unexpected '{% endfor %}'");
  expect_error("{{ 'abc' | nosuch }}", "t.jinja:1:12: unknown filter 'nosuch'");
  expect_error("\n  {{ raise_exception('Roles must alternate') }}", "t.jinja:2:21: the template raised an exception: Roles must alternate");
  expect_error("{{ messages[0]['role'] }}", "t.jinja:1:15: 'list[0]' is undefined", {{"messages", Json::array()}});
  expect_error("{{ 'a' + 1 }}", "t.jinja:1:8: unsupported operand types for +: 'str' and 'int'");
  expect_error("{{ 'unterminated }}", "t.jinja:1:4: the string is not closed");
  expect_error("{% frobnicate %}", "t.jinja:1:4: unknown statement 'frobnicate'");
  expect_error("{# open comment", "t.jinja:1:1: the comment is not closed");
  // What would exhaust the stack or the memory is refused.
  expect_error("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}", "nested more than 200 levels deep");
  expect_error(std::string(3000, '-').insert(0, "{{ ") + "1 }}", "nested more than 200 levels deep");
  std::string ifs;
  for (int i = 0; i < 300; ++i) ifs += "{% if true %}";
  expect_error(ifs, "nested more than 200 levels deep");
  expect_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "macro calls nested 100 deep");
  expect_error("{{ 99999999999999999999 }}", "t.jinja:1:4: the number 99999999999999999999 is out of range");
  expect_error("{{ 'ab' * 1000000000000 }}", "t.jinja:1:9: repeating a str 1000000000000 times is too large");
  // Exact powers while an int64 holds them; beyond, a float where Python has a big int.
  EXPECT_EQ(render("{{ 3 ** 39 }}|{{ 2 ** 0 }}|{{ 2 ** 100 }}|{{ 2 ** -1 }}"), "4052555153018976267|1|1.2676506002282294e+30|0.5");
  expect_error("{% for i in range(1000000000000) %}{% endfor %}", "t.jinja:1:18: range of 1000000000000 items: the sandbox allows 100000");
}
