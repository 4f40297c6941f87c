// shardlora::Error and SHARDLORA_CHECK: the one error type of the project. Kernels and
// framework throw it; only main() turns it into an exit code.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace shardlora {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}
}  // namespace detail

}  // namespace shardlora

// Throws shardlora::Error with the streamed message parts when cond is false.
#define SHARDLORA_CHECK(cond, ...)                                              \
  do {                                                                          \
    if (!(cond)) throw ::shardlora::Error(::shardlora::detail::concat(__VA_ARGS__)); \
  } while (0)
