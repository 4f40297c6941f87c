// `mpirun -np N shardlora env --json`: each rank reports its own rank, once.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <set>
#include <sstream>

#include "shardlora_paths.h"
#include "subprocess.h"

using namespace shardlora::testing;

TEST(EnvUnderMpirun, EachRankReportsItsOwnRank) {
  for (int ranks : {2, 3}) {
    const auto result = run_process(mpirun_command(ranks, {shardlora_binary(), "env", "--json"}), 120.0);
    ASSERT_FALSE(result.timed_out) << "mpirun hung";
    ASSERT_EQ(result.exit_code, 0) << result.err;
    std::set<int> seen;
    std::istringstream lines(result.out);
    for (std::string line; std::getline(lines, line);) {
      if (line.empty() || line[0] != '{') continue;  // mpirun may add notices
      const auto info = nlohmann::json::parse(line);
      EXPECT_EQ(info["launch"]["source"], "Open MPI");
      EXPECT_EQ(info["launch"]["world_size"], ranks);
      EXPECT_TRUE(seen.insert(info["launch"]["rank"].get<int>()).second) << "rank reported twice";
      EXPECT_LT(info["launch"]["local_rank"].get<int>(), ranks);
    }
    std::set<int> expected;
    for (int rank = 0; rank < ranks; ++rank) expected.insert(rank);
    EXPECT_EQ(seen, expected) << result.out;
  }
}
