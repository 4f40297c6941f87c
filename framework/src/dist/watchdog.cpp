#include "shardlora/dist/watchdog.h"

#include <algorithm>
#include <cstdio>

namespace shardlora::dist {

using Clock = std::chrono::steady_clock;

Milliseconds Watchdog::interval_for(Milliseconds silence_limit) {
  return std::clamp(silence_limit / 10, Milliseconds(50), Milliseconds(2000));
}

std::string Watchdog::beat_key(int rank) { return "watchdog/beat/" + std::to_string(rank); }

Watchdog::Watchdog(Store& store, const Options& options, OnLost on_lost)
    : store_(store), options_(options), on_lost_(std::move(on_lost)), interval_(interval_for(options.silence_limit)) {
  const int n = options.world_size, me = options.rank;
  for (int peer : {(me + 1) % n, (me + n - 1) % n}) {
    if (peer != me && std::find(watched_.begin(), watched_.end(), peer) == watched_.end()) watched_.push_back(peer);
  }
  thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
  try {
    store_.set(beat_key(options_.rank), kGoodbye);
  } catch (const std::exception&) {
    // The store is gone with the job: nobody is left to watch this rank.
  }
}

void Watchdog::run() {
  // Each neighbour's last value and when it last changed; silence counts from the start.
  std::vector<std::pair<std::string, Clock::time_point>> last_seen(watched_.size(), {"", Clock::now()});
  for (int64_t beat = 1;; ++beat) {
    std::string lost;
    try {
      lost = look(beat, last_seen);
    } catch (const std::exception& error) {
      lost = options_.store_owner + " is unreachable (" + error.what() + "): the job has lost it";
    }
    if (!lost.empty()) {
      on_lost_(lost);
      return;
    }
    std::unique_lock<std::mutex> lock(mutex_);
    if (wake_.wait_for(lock, interval_, [this] { return stopping_; })) return;
  }
}

std::string Watchdog::look(int64_t beat, std::vector<std::pair<std::string, Clock::time_point>>& last_seen) {
  store_.set(beat_key(options_.rank), std::to_string(beat));
  const std::string verdict = store_.peek(kLostKey, "");
  if (!verdict.empty()) return verdict;
  const auto now = Clock::now();
  for (size_t i = 0; i < watched_.size(); ++i) {
    const std::string value = store_.peek(beat_key(watched_[i]), "");
    auto& [seen, changed_at] = last_seen[i];
    if (value == kGoodbye) continue;
    if (value != seen) {
      seen = value;
      changed_at = now;
      continue;
    }
    const double silent_s = std::chrono::duration<double>(now - changed_at).count();
    if (silent_s * 1000 > static_cast<double>(options_.silence_limit.count())) {
      char text[256];
      std::snprintf(text, sizeof text, "lost rank %d: no heartbeat for %.1f s (killed, stopped or its host gone; noticed by rank %d)",
                    watched_[i], silent_s, options_.rank);
      store_.set(kLostKey, text);  // every other rank reads it within one interval
      return text;
    }
  }
  return {};
}

}  // namespace shardlora::dist
