// Liveness of a job's ranks, watched through its Store and apart from the collectives (which
// a dead or stopped rank leaves blocked until their own timeout, without a name).
//
// Every rank beats from a thread of its own (a counter under watchdog/beat/<rank>) and
// watches its two ring neighbours. A neighbour silent for longer than the limit (killed,
// SIGSTOPped, its host gone) is declared lost under watchdog/lost, which every rank polls:
// all ranks learn it within one interval and fail naming it, even while their main thread is
// blocked in a collective that will never complete. A rank that ends normally says goodbye
// and is not watched after that. The store's load is O(1) per rank and interval.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "shardlora/dist/store.h"

namespace shardlora::dist {

class Watchdog {
 public:
  // Called once, on the watchdog's thread, with a message naming the lost rank (or the
  // unreachable store). A job's handler prints it and exits.
  using OnLost = std::function<void(const std::string& why)>;

  struct Options {
    int rank = 0, world_size = 1;
    Milliseconds silence_limit{150000};
    std::string store_owner = "the rendezvous store";  // named when the store itself is gone
  };

  // `store` is the watchdog's own connection (another thread's blocking call on a shared
  // client would delay the beats) and must outlive it.
  Watchdog(Store& store, const Options& options, OnLost on_lost);
  ~Watchdog();  // stops the thread, then says goodbye
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // How often a rank beats and looks: often enough that a silent rank is noticed within
  // about a tenth of the limit after it expires.
  static Milliseconds interval_for(Milliseconds silence_limit);

  static std::string beat_key(int rank);
  static constexpr const char* kLostKey = "watchdog/lost";
  static constexpr const char* kGoodbye = "done";

 private:
  void run();
  // One round: beat, read the verdict, check the neighbours; the message when one is lost.
  std::string look(int64_t beat, std::vector<std::pair<std::string, std::chrono::steady_clock::time_point>>& last_seen);

  Store& store_;
  Options options_;
  OnLost on_lost_;
  Milliseconds interval_;
  std::vector<int> watched_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace shardlora::dist
