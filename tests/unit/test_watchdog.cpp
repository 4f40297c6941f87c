// The heartbeat watchdog over an in-memory store, ranks as watchdogs of one process: a rank
// whose beats stop is named by every other rank (its neighbours see it, the rest read the
// verdict) within the silence limit and a few intervals; live ranks and ranks that said
// goodbye are never reported; a store that fails is reported naming its owner.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "shardlora/dist/watchdog.h"

using namespace shardlora;
using Clock = std::chrono::steady_clock;

namespace {

constexpr dist::Milliseconds kLimit(600);

// What each rank's watchdog reported, and when.
struct Reports {
  std::mutex mutex;
  std::map<int, std::pair<std::string, double>> by_rank;  // rank -> message, seconds since start
  Clock::time_point start = Clock::now();

  dist::Watchdog::OnLost for_rank(int rank) {
    return [this, rank](const std::string& why) {
      std::lock_guard<std::mutex> lock(mutex);
      by_rank[rank] = {why, std::chrono::duration<double>(Clock::now() - start).count()};
    };
  }
  size_t count() {
    std::lock_guard<std::mutex> lock(mutex);
    return by_rank.size();
  }
};

// A rank's view of the shared store that can freeze (every call blocks while frozen: a
// SIGSTOPped rank) or fail (every call throws: the store's host is gone).
class FaultyStore : public dist::Store {
 public:
  explicit FaultyStore(dist::Store& inner) : inner_(inner) {}
  std::atomic<bool> frozen{false}, failing{false};

  void set(const std::string& key, const std::string& value) override {
    check();
    inner_.set(key, value);
  }
  std::string get(const std::string& key, dist::Milliseconds timeout) override {
    check();
    return inner_.get(key, timeout);
  }
  int64_t add(const std::string& key, int64_t delta) override {
    check();
    return inner_.add(key, delta);
  }
  void wait(const std::vector<std::string>& keys, dist::Milliseconds timeout) override {
    check();
    inner_.wait(keys, timeout);
  }
  std::string peek(const std::string& key, const std::string& fallback) override {
    check();
    return inner_.peek(key, fallback);
  }

 private:
  void check() const {
    while (frozen) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (failing) throw Error("connection reset by peer");
  }
  dist::Store& inner_;
};

// Declared so that the watchdogs go first: their threads use the rest.
struct Job {
  dist::InMemoryStore shared;
  Reports reports;
  std::vector<std::unique_ptr<FaultyStore>> views;
  std::vector<std::unique_ptr<dist::Watchdog>> dogs;

  explicit Job(int world) {
    for (int r = 0; r < world; ++r) {
      views.push_back(std::make_unique<FaultyStore>(shared));
      dogs.push_back(std::make_unique<dist::Watchdog>(
          *views.back(), dist::Watchdog::Options{.rank = r, .world_size = world, .silence_limit = kLimit, .store_owner = "the launcher"},
          reports.for_rank(r)));
    }
  }
  // Waits until `count` ranks reported, or `seconds` passed.
  void wait_for_reports(size_t count, double seconds) {
    while (reports.count() < count && std::chrono::duration<double>(Clock::now() - reports.start).count() < seconds) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
};

TEST(Watchdog, LiveRanksAreNeverReported) {
  Job job(4);
  std::this_thread::sleep_for(kLimit * 4);
  EXPECT_EQ(job.reports.count(), 0u);
}

TEST(Watchdog, EveryRankNamesARankWhoseBeatsStopWithinTheLimitAndAFewIntervals) {
  Job job(5);
  std::this_thread::sleep_for(kLimit);  // all beating
  job.views[2]->frozen = true;
  const auto frozen_at = std::chrono::duration<double>(Clock::now() - job.reports.start).count();
  job.wait_for_reports(4, 10.0);
  ASSERT_EQ(job.reports.count(), 4u);
  const double bound = frozen_at + std::chrono::duration<double>(kLimit).count() + 4 * 0.06;
  for (int r : {0, 1, 3, 4}) {
    const auto& [why, at] = job.reports.by_rank.at(r);
    EXPECT_NE(why.find("lost rank 2: no heartbeat for"), std::string::npos) << "rank " << r << ": " << why;
    EXPECT_LE(at, bound + 0.5) << "rank " << r;  // slack for a loaded machine
    EXPECT_GE(at, frozen_at + 0.5 * std::chrono::duration<double>(kLimit).count()) << "not before the limit";
  }
  EXPECT_EQ(job.reports.by_rank.count(2), 0u) << "the frozen rank itself saw nothing";
  job.views[2]->frozen = false;  // SIGCONT, so its watchdog can stop
}

TEST(Watchdog, ARankThatNeverBeatsIsReported) {
  dist::InMemoryStore store;
  Reports reports;
  dist::Watchdog alone(store, {.rank = 0, .world_size = 2, .silence_limit = kLimit}, reports.for_rank(0));
  std::this_thread::sleep_for(kLimit * 2);
  ASSERT_EQ(reports.count(), 1u);
  EXPECT_NE(reports.by_rank.at(0).first.find("lost rank 1"), std::string::npos) << reports.by_rank.at(0).first;
}

TEST(Watchdog, ARankThatSaidGoodbyeIsNotReported) {
  Job job(3);
  std::this_thread::sleep_for(kLimit / 2);
  job.dogs[1].reset();  // rank 1 finished
  std::this_thread::sleep_for(kLimit * 3);
  EXPECT_EQ(job.reports.count(), 0u);
  EXPECT_EQ(job.shared.peek(dist::Watchdog::beat_key(1), ""), dist::Watchdog::kGoodbye);
}

TEST(Watchdog, AnUnreachableStoreIsReportedNamingItsOwner) {
  Job job(2);
  job.views[0]->failing = true;
  job.wait_for_reports(1, 5.0);
  ASSERT_EQ(job.reports.by_rank.count(0), 1u);
  const std::string& why = job.reports.by_rank.at(0).first;
  EXPECT_NE(why.find("the launcher is unreachable (connection reset by peer)"), std::string::npos) << why;
}

}  // namespace
