// Runs a program to completion for tests: captures stdout and stderr, returns the exit
// code, kills it after a timeout so a hung child fails the test instead of the CI job.
#pragma once

#include <string>
#include <vector>

namespace shardlora::testing {

struct ProcessResult {
  int exit_code = -1;      // the child's exit status; 128 + signal when killed by one
  bool timed_out = false;
  std::string out;
  std::string err;
};

ProcessResult run_process(const std::vector<std::string>& argv, double timeout_seconds = 120.0);

}  // namespace shardlora::testing
