// Recipe YAML: every key is declared once in the schema table (name, type, default, range
// or choices, help), which drives parsing, validation, defaults, `--help-recipe` and the
// resolved dump written into the run directory. Unknown keys, wrong types, out-of-range
// values and missing required keys are errors naming the key and its line; command-line
// overrides `section.key=value` (torchtune style) are parsed as YAML scalars or flow lists.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace shardlora::train {

enum class KeyType { Int, Float, Bool, String, Choice, StringList, FloatList };

struct KeySpec {
  std::string name;               // dotted path: "lora.r", "model.quantization.type"
  KeyType type;
  std::string default_value;      // YAML text; empty with required = true
  bool required = false;
  double min = 0, max = 0;        // Int / Float / FloatList elements, when min < max
  std::vector<std::string> choices;  // Choice
  size_t list_size = 0;           // FloatList: exact length
  std::string help;
};

const std::vector<KeySpec>& recipe_schema();

// The text of `shardlora train --help-recipe`: every key with type, default and help.
std::string recipe_help();

class Recipe {
 public:
  // `name` labels errors (a file path, or "<string>").
  static Recipe parse(const std::string& yaml, const std::string& name, const std::vector<std::string>& overrides = {});
  static Recipe load(const std::string& path, const std::vector<std::string>& overrides = {});

  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::string get_string(const std::string& key) const;  // String and Choice
  std::vector<std::string> get_strings(const std::string& key) const;
  std::vector<double> get_floats(const std::string& key) const;

  // Where a value came from: "recipe.yaml:12", "override", or "default".
  std::string origin(const std::string& key) const;
  // Every key, resolved, as YAML that parses back to the same recipe.
  std::string dump() const;

  // Errors naming the key and its line when a path named by one of `keys` (if not empty)
  // does not exist. Separate from parsing, so recipes can be checked without their files.
  void require_paths(const std::vector<std::string>& keys) const;

 private:
  struct Value {
    std::string yaml;    // canonical YAML text of the value
    std::string origin;
  };
  const Value& value(const std::string& key, KeyType type) const;
  // Rules across keys (optimizer name vs placement, val vs val_fraction, custom template).
  void check_combinations() const;
  std::map<std::string, Value> values_;
};

}  // namespace shardlora::train
