// An ATen operator called through the dispatcher with its arguments named as in its schema,
// for operators whose C++ signature changes between libtorch releases (private ones, such as
// aten::_flash_attention_forward, gain arguments from release to release) or which an older
// libtorch lacks: one source then builds against every libtorch and asks at run time. Autograd
// applies as to a direct call; arguments left out take their schema defaults.
#pragma once

#include <ATen/core/ivalue.h>

#include <string>
#include <utility>
#include <vector>

namespace shardlora {

using NamedArguments = std::vector<std::pair<std::string, c10::IValue>>;

// Whether this libtorch has the operator `name` (e.g. "aten::softmax") with overload
// `overload` ("" for none) and arguments of every one of `argument_names`.
bool op_has_arguments(const std::string& name, const std::string& overload, const std::vector<std::string>& argument_names);

// Its returns. Throws, naming the operator and the argument, when this libtorch lacks the
// operator, a named argument is not in its schema, or an argument without a default is not named.
std::vector<c10::IValue> call_op_by_argument_names(const std::string& name, const std::string& overload,
                                                   const NamedArguments& arguments);

}  // namespace shardlora
