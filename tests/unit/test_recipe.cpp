// The recipe schema: defaults, types, ranges, choices, unknown and duplicate keys with their
// lines, overrides, the resolved dump parsing back to the same values, the help text.
#include <gtest/gtest.h>

#include "shardlora/kernels/check.h"
#include "shardlora/train/recipe.h"

using namespace shardlora;
using namespace shardlora::train;

namespace {

const char kMinimal[] = R"(# a QLoRA recipe
model:
  path: models/tiny
data:
  train: data/train.jsonl
)";

std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    Recipe::parse(yaml, "recipe.yaml", overrides);
  } catch (const Error& error) {
    return error.what();
  }
  return "no error";
}

}  // namespace

TEST(Recipe, DefaultsFillEveryKey) {
  const Recipe recipe = Recipe::parse(kMinimal, "recipe.yaml");
  EXPECT_EQ(recipe.get_string("model.path"), "models/tiny");
  EXPECT_EQ(recipe.origin("model.path"), "recipe.yaml:3");
  EXPECT_EQ(recipe.get_int("lora.r"), 16);
  EXPECT_EQ(recipe.origin("lora.r"), "default");
  EXPECT_EQ(recipe.get_string("model.quantization.type"), "nf4");
  EXPECT_TRUE(recipe.get_bool("model.quantization.double_quant"));
  EXPECT_EQ(recipe.get_strings("lora.target_modules"), (std::vector<std::string>{"all-linear"}));
  EXPECT_EQ(recipe.get_floats("optimizer.betas"), (std::vector<double>{0.9, 0.999}));
  EXPECT_DOUBLE_EQ(recipe.get_float("optimizer.lr"), 2e-4);
  EXPECT_EQ(recipe.get_string("data.val"), "");
  EXPECT_THROW(recipe.get_int("lora.alpha"), Error) << "a number is not an integer";
  EXPECT_THROW(recipe.get_int("lora.rank"), Error);
}

TEST(Recipe, ValuesAreCheckedAndErrorsNameKeyAndLine) {
  EXPECT_NE(error_of(std::string(kMinimal) + "lora:\n  r: sixteen\n").find("recipe.yaml:7: key 'lora.r' must be an integer in [1, 4096], found 'sixteen'"),
            std::string::npos) << error_of(std::string(kMinimal) + "lora:\n  r: sixteen\n");
  EXPECT_NE(error_of(std::string(kMinimal) + "lora:\n  dropout: 1.5\n").find("recipe.yaml:7: key 'lora.dropout' must be a number in [0, 0.999]"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "optimizer:\n  name: sgd\n").find("key 'optimizer.name' must be one of adamw | paged_adamw_32bit | paged_adamw_8bit, found 'sgd'"),
            std::string::npos) << error_of(std::string(kMinimal) + "optimizer:\n  name: sgd\n");
  EXPECT_NE(error_of(std::string(kMinimal) + "lora:\n  rank: 8\n").find("recipe.yaml:7: unknown key 'lora.rank'"), std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "trainer:\n  steps: 8\n").find("recipe.yaml:6: unknown key 'trainer'"), std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "lora: 8\n").find("'lora' is a section and must hold keys"), std::string::npos);
  EXPECT_NE(error_of("data:\n  train: x.jsonl\n").find("recipe.yaml: key 'model.path' is required"), std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "optimizer:\n  betas: [0.9]\n").find("key 'optimizer.betas' must be a list of 2 numbers"),
            std::string::npos);
  EXPECT_NE(error_of("model: [unclosed\n").find("recipe.yaml:2: invalid YAML"), std::string::npos) << error_of("model: [unclosed\n");
  EXPECT_NE(error_of("model:\n  path: a\nmodel:\n  path: b\ndata:\n  train: t\n").find("given twice"), std::string::npos)
      << error_of("model:\n  path: a\nmodel:\n  path: b\ndata:\n  train: t\n");
}

TEST(Recipe, OverridesWinAndAreChecked) {
  const Recipe recipe = Recipe::parse(std::string(kMinimal) + "lora:\n  r: 32\n", "recipe.yaml",
                                      {"lora.r=8", "lora.target_modules=[q_proj, v_proj]", "optimizer.lr=1e-3", "data.packing=false"});
  EXPECT_EQ(recipe.get_int("lora.r"), 8);
  EXPECT_EQ(recipe.origin("lora.r"), "override");
  EXPECT_EQ(recipe.get_strings("lora.target_modules"), (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_DOUBLE_EQ(recipe.get_float("optimizer.lr"), 1e-3);
  EXPECT_FALSE(recipe.get_bool("data.packing"));
  EXPECT_NE(error_of(kMinimal, {"lora.rank=8"}).find("override 'lora.rank=8': unknown key 'lora.rank'"), std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"lora.r=0"}).find("override 'lora.r=0': key 'lora.r' must be an integer in [1, 4096]"),
            std::string::npos);
  EXPECT_NE(error_of(kMinimal, {"lora.r"}).find("is not section.key=value"), std::string::npos);
  // Overrides can supply required keys.
  EXPECT_EQ(Recipe::parse("", "empty", {"model.path=m", "data.train=t"}).get_string("model.path"), "m");
}

TEST(Recipe, ResolvedDumpParsesBackToTheSameValues) {
  const Recipe recipe = Recipe::parse(kMinimal, "recipe.yaml", {"lora.r=8", "output.dir=runs/x y", "data.val=\"\""});
  const Recipe again = Recipe::parse(recipe.dump(), "resolved.yaml");
  for (const KeySpec& spec : recipe_schema()) {
    EXPECT_NE(again.origin(spec.name), "default") << spec.name << " missing from the dump:\n" << recipe.dump();
    switch (spec.type) {
      case KeyType::Int: EXPECT_EQ(again.get_int(spec.name), recipe.get_int(spec.name)) << spec.name; break;
      case KeyType::Float: EXPECT_EQ(again.get_float(spec.name), recipe.get_float(spec.name)) << spec.name; break;
      case KeyType::Bool: EXPECT_EQ(again.get_bool(spec.name), recipe.get_bool(spec.name)) << spec.name; break;
      case KeyType::String:
      case KeyType::Choice: EXPECT_EQ(again.get_string(spec.name), recipe.get_string(spec.name)) << spec.name; break;
      case KeyType::StringList: EXPECT_EQ(again.get_strings(spec.name), recipe.get_strings(spec.name)) << spec.name; break;
      case KeyType::FloatList: EXPECT_EQ(again.get_floats(spec.name), recipe.get_floats(spec.name)) << spec.name; break;
    }
  }
}

TEST(Recipe, HelpListsEveryKey) {
  const std::string help = recipe_help();
  for (const KeySpec& spec : recipe_schema()) EXPECT_NE(help.find("  " + spec.name + ": "), std::string::npos) << spec.name;
  EXPECT_NE(help.find("model.path: string (required)"), std::string::npos) << help;
}

TEST(Recipe, RulesAcrossKeysNameTheKey) {
  EXPECT_NE(error_of(std::string(kMinimal) + "optimizer:\n  name: paged_adamw_8bit\n  placement: device\n")
                .find("recipe.yaml:8: key 'optimizer.placement' is 'device', but optimizer.name 'paged_adamw_8bit' keeps its state in CPU memory"),
            std::string::npos)
      << error_of(std::string(kMinimal) + "optimizer:\n  name: paged_adamw_8bit\n  placement: device\n");
  EXPECT_EQ(error_of(std::string(kMinimal) + "optimizer:\n  name: adamw\n  placement: device\n"), "no error");
  EXPECT_NE(error_of(kMinimal, {"data.val=v.jsonl", "data.val_fraction=0.1"}).find("override: key 'data.val_fraction' holds data out"),
            std::string::npos)
      << error_of(kMinimal, {"data.val=v.jsonl", "data.val_fraction=0.1"});
  EXPECT_NE(error_of(kMinimal, {"data.custom_template.user_prefix=Q-"}).find("data.template is 'auto', not custom"),
            std::string::npos);
}

TEST(Recipe, ASecondDocumentOrAStructuredKeyIsAnErrorNotIgnored) {
  EXPECT_NE(error_of(std::string(kMinimal) + "---\nlora:\n  r: 4\n").find("recipe.yaml:7: a second YAML document"), std::string::npos)
      << error_of(std::string(kMinimal) + "---\nlora:\n  r: 4\n");
  EXPECT_NE(error_of("lora:\n  ? [r, alpha]\n  : 4\n").find("recipe.yaml:2: a key must be a plain name (in section 'lora')"),
            std::string::npos)
      << error_of("lora:\n  ? [r, alpha]\n  : 4\n");
}

TEST(Recipe, MissingPathsNameTheKeyAndLine) {
  const Recipe recipe = Recipe::parse(kMinimal, "recipe.yaml");
  try {
    recipe.require_paths({"model.path", "data.val"});
    FAIL() << "models/tiny does not exist";
  } catch (const Error& error) {
    EXPECT_STREQ(error.what(), "recipe.yaml:3: key 'model.path': 'models/tiny' does not exist");
  }
}
