// A one-line progress bar on stderr, drawn only when stderr is a terminal (logs and CI
// output stay clean). Redraws at most ten times a second.
#pragma once

#include <chrono>
#include <string>

namespace shardlora::launcher {

class ProgressBar {
 public:
  ProgressBar();
  ~ProgressBar();  // ends the line if one was drawn (an error message then starts on its own line)
  void update(double fraction, const std::string& text);
  // Draws the bar full and ends its line, before a summary is printed.
  void finish(const std::string& text);
  // Prints `line` to stdout above the bar (which the next update redraws).
  void print_line(const std::string& line);
  bool enabled() const { return enabled_; }

 private:
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace shardlora::launcher
