// Paths and the mpirun prefix configured by tests/CMakeLists.txt.
#pragma once

#include <string>
#include <vector>

namespace shardlora::testing {

inline std::string shardlora_binary() { return SHARDLORA_BIN; }

// mpirun with --oversubscribe (and --allow-run-as-root when configured as root), then
// "-np N" and the given command.
inline std::vector<std::string> mpirun_command(int ranks, const std::vector<std::string>& command) {
  std::vector<std::string> argv = {SHARDLORA_MPIEXEC};
  argv.push_back("-np");
  argv.push_back(std::to_string(ranks));
  argv.insert(argv.end(), command.begin(), command.end());
  return argv;
}

}  // namespace shardlora::testing
