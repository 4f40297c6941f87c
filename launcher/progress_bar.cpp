#include "progress_bar.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace shardlora::launcher {

ProgressBar::ProgressBar() : enabled_(::isatty(STDERR_FILENO) == 1) {}

ProgressBar::~ProgressBar() {
  if (drawn_) std::fputc('\n', stderr);
}

void ProgressBar::finish(const std::string& text) {
  update(1.0, text);
  if (drawn_) std::fputc('\n', stderr);
  drawn_ = false;
}

void ProgressBar::print_line(const std::string& line) {
  if (drawn_) {
    std::fputs("\r\033[K", stderr);  // clear the bar's line
    std::fflush(stderr);
    drawn_ = false;
  }
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

void ProgressBar::update(double fraction, const std::string& text) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && fraction < 1.0 && now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  winsize size{};
  const int columns = ::ioctl(STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0 ? size.ws_col : 80;
  constexpr int kBarWidth = 30;
  const int filled = static_cast<int>(std::clamp(fraction, 0.0, 1.0) * kBarWidth);
  std::string line = std::to_string(static_cast<int>(fraction * 100)) + "% [" + std::string(filled, '#') +
                     std::string(kBarWidth - filled, '.') + "] " + text;
  line.resize(static_cast<size_t>(std::max(columns - 1, 10)), ' ');
  std::fprintf(stderr, "\r%s", line.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

}  // namespace shardlora::launcher
