// The shardlora executable end to end: help, version, usage errors, `env`.
#include <gtest/gtest.h>
#include <sched.h>
#include <nlohmann/json.hpp>

#include "shardlora_paths.h"
#include "subprocess.h"

using namespace shardlora::testing;

namespace {

ProcessResult run_shardlora(std::vector<std::string> args) {
  args.insert(args.begin(), shardlora_binary());
  return run_process(args, 60.0);
}

const char* const kSubcommands[] = {"env", "quantize", "init-model", "generate", "merge", "train", "eval", "estimate", "plot", "launch", "slurm"};

}  // namespace

TEST(Cli, VersionPrintsProjectVersion) {
  const auto result = run_shardlora({"--version"});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.out, std::string("shardlora ") + SHARDLORA_VERSION + "\n");
}

TEST(Cli, HelpListsEverySubcommand) {
  const auto result = run_shardlora({"--help"});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  for (const char* name : kSubcommands) {
    EXPECT_NE(result.out.find(name), std::string::npos) << name << " missing from --help:\n" << result.out;
  }
}

TEST(Cli, SubcommandHelpExitsZero) {
  const auto result = run_shardlora({"env", "--help"});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("--json"), std::string::npos) << result.out;
}

TEST(Cli, NoSubcommandIsAUsageError) {
  const auto result = run_shardlora({});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("Usage"), std::string::npos) << result.err;
}

TEST(Cli, UnknownSubcommandIsAUsageErrorOnStderr) {
  const auto result = run_shardlora({"frobnicate"});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_TRUE(result.out.empty()) << result.out;
  EXPECT_NE(result.err.find("frobnicate"), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("Usage"), std::string::npos) << result.err;
}

TEST(Cli, UnknownFlagIsAUsageError) {
  for (const std::vector<std::string>& args : {std::vector<std::string>{"--frobnicate"},
                                               std::vector<std::string>{"env", "--frobnicate"}}) {
    const auto result = run_shardlora(args);
    EXPECT_EQ(result.exit_code, 2) << args.back();
    EXPECT_NE(result.err.find("--frobnicate"), std::string::npos) << result.err;
  }
}

TEST(Cli, EnvPrintsBuildAndLaunchFacts) {
  const auto result = run_shardlora({"env"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  for (const char* field : {"shardlora ", "libtorch", "CUDA", "NCCL", "MPI", "threads", "launch",
                            "rank 0 of 1"}) {
    EXPECT_NE(result.out.find(field), std::string::npos) << field << " missing:\n" << result.out;
  }
}

TEST(Cli, EnvShowsEachRanksShareOfTheCpus) {
  cpu_set_t mask;
  ASSERT_EQ(sched_getaffinity(0, sizeof mask, &mask), 0);
  const int cpus = CPU_COUNT(&mask);
  const auto threads = [](std::vector<std::string> vars) {
    std::vector<std::string> args = {"/usr/bin/env", "-u", "OMP_NUM_THREADS", "-u", "SLURM_CPUS_PER_TASK"};
    args.insert(args.end(), vars.begin(), vars.end());
    args.insert(args.end(), {shardlora_binary(), "env", "--json"});
    const auto result = run_process(args, 60.0);
    EXPECT_EQ(result.exit_code, 0) << result.err;
    const auto info = nlohmann::json::parse(result.out)["threads"];
    EXPECT_EQ(info["torch"], info["openmp"]) << info.dump();
    return info["torch"].get<int>();
  };
  EXPECT_EQ(threads({}), cpus) << "one rank alone takes them all";
  EXPECT_EQ(threads({"SHARDLORA_RANK=1", "SHARDLORA_WORLD_SIZE=2", "SHARDLORA_LOCAL_RANK=1", "SHARDLORA_LOCAL_WORLD_SIZE=2"}),
            std::max(1, cpus / 2))
      << "two local ranks share them";
  EXPECT_EQ(threads({"OMP_NUM_THREADS=1"}), 1);
  const auto bad = run_process({"/usr/bin/env", "OMP_NUM_THREADS=lots", shardlora_binary(), "env"}, 60.0);
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("OMP_NUM_THREADS='lots'"), std::string::npos) << bad.err;
}

TEST(Cli, EnvJsonIsOneParsableObject) {
  const auto result = run_shardlora({"env", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto info = nlohmann::json::parse(result.out);
  EXPECT_EQ(info["version"], SHARDLORA_VERSION);
  EXPECT_FALSE(info["git_commit"].get<std::string>().empty());
  EXPECT_FALSE(info["torch"]["version"].get<std::string>().empty());
  EXPECT_NE(info["mpi"]["library"].get<std::string>().find("MPI"), std::string::npos);
  EXPECT_EQ(info["launch"]["rank"], 0);
  EXPECT_EQ(info["launch"]["world_size"], 1);
  EXPECT_EQ(info["cuda"]["devices"].size(), info["cuda"]["device_count"].get<size_t>());
  EXPECT_GE(info["threads"]["torch"].get<int>(), 1);
}
