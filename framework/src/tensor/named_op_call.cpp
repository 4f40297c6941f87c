#include "shardlora/tensor/named_op_call.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/version.h>

#include <algorithm>

#include "shardlora/kernels/check.h"

namespace shardlora {
namespace {

// c10::optional on libtorch 1.13, std::optional on 2.x.
auto find_op(const std::string& name, const std::string& overload) {
  return c10::Dispatcher::singleton().findSchema(c10::OperatorName(name, overload));
}

std::string op_text(const std::string& name, const std::string& overload) {
  return overload.empty() ? name : name + "." + overload;
}

bool has_argument(const std::vector<c10::Argument>& arguments, const std::string& name) {
  return std::any_of(arguments.begin(), arguments.end(), [&](const c10::Argument& a) { return a.name() == name; });
}

}  // namespace

bool op_has_arguments(const std::string& name, const std::string& overload, const std::vector<std::string>& argument_names) {
  const auto op = find_op(name, overload);
  if (!op) return false;
  return std::all_of(argument_names.begin(), argument_names.end(),
                     [&](const std::string& wanted) { return has_argument(op->schema().arguments(), wanted); });
}

std::vector<c10::IValue> call_op_by_argument_names(const std::string& name, const std::string& overload,
                                                   const NamedArguments& arguments) {
  const auto op = find_op(name, overload);
  SHARDLORA_CHECK(op, "this libtorch (", TORCH_VERSION, ") has no operator ", op_text(name, overload));
  const auto& schema_arguments = op->schema().arguments();
  for (const auto& [argument, value] : arguments) {
    SHARDLORA_CHECK(has_argument(schema_arguments, argument), op_text(name, overload), " in libtorch ", TORCH_VERSION,
                    " has no argument '", argument, "'");
  }
  torch::jit::Stack stack;
  for (const c10::Argument& wanted : schema_arguments) {
    const auto given = std::find_if(arguments.begin(), arguments.end(), [&](const auto& a) { return a.first == wanted.name(); });
    if (given != arguments.end()) {
      stack.push_back(given->second);
    } else {
      SHARDLORA_CHECK(wanted.default_value().has_value(), op_text(name, overload), ": argument '", wanted.name(),
                      "' has no default and was not given");
      stack.push_back(*wanted.default_value());
    }
  }
  op->callBoxed(&stack);
  return stack;
}

}  // namespace shardlora
