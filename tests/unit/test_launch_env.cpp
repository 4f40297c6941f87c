// Rank discovery from launcher environments, fed from a map instead of the process env.
#include <gtest/gtest.h>

#include <map>

#include "shardlora/cluster/job.h"
#include "shardlora/cluster/launch_env.h"
#include "shardlora/kernels/check.h"

using namespace shardlora::cluster;

namespace {

LaunchEnv detect(const std::map<std::string, std::string>& vars) {
  return detect_launch_env([&vars](const char* name) -> std::optional<std::string> {
    const auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  });
}

std::string device_error(const std::string& choice, const LaunchEnv& launch, int visible_gpus) {
  try {
    rank_device(choice, launch, visible_gpus);
  } catch (const shardlora::Error& error) {
    return error.what();
  }
  return "no error";
}

std::string error_of(const std::map<std::string, std::string>& vars) {
  try {
    detect(vars);
  } catch (const shardlora::Error& error) {
    return error.what();
  }
  return "no error";
}

}  // namespace

TEST(LaunchEnv, NoLauncherIsOneProcess) {
  const LaunchEnv launch = detect({});
  EXPECT_EQ(launch.source, LaunchSource::Single);
  EXPECT_EQ(launch.rank, 0);
  EXPECT_EQ(launch.world_size, 1);
  EXPECT_EQ(launch.local_rank, 0);
  EXPECT_FALSE(launch.hostname.empty());
}

TEST(LaunchEnv, OpenMpi) {
  const LaunchEnv launch = detect({{"OMPI_COMM_WORLD_RANK", "5"}, {"OMPI_COMM_WORLD_SIZE", "8"},
                                   {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}});
  EXPECT_EQ(launch.source, LaunchSource::OpenMpi);
  EXPECT_EQ(launch.rank, 5);
  EXPECT_EQ(launch.world_size, 8);
  EXPECT_EQ(launch.local_rank, 1);
  EXPECT_EQ(launch.local_world_size, 4);
}

TEST(LaunchEnv, MpichHydra) {
  const LaunchEnv launch = detect({{"PMI_RANK", "2"}, {"PMI_SIZE", "3"}, {"MPI_LOCALRANKID", "0"}});
  EXPECT_EQ(launch.source, LaunchSource::MpichPmi);
  EXPECT_EQ(launch.rank, 2);
  EXPECT_EQ(launch.world_size, 3);
  EXPECT_EQ(launch.local_rank, 0);
  EXPECT_EQ(launch.local_world_size, 0) << "unknown when the launcher does not say";
}

TEST(LaunchEnv, SlurmStepUsesStepTaskCount) {
  const LaunchEnv launch = detect({{"SLURM_PROCID", "3"}, {"SLURM_STEP_NUM_TASKS", "4"},
                                   {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "3"}});
  EXPECT_EQ(launch.source, LaunchSource::Slurm);
  EXPECT_EQ(launch.rank, 3);
  EXPECT_EQ(launch.world_size, 4);
  EXPECT_EQ(launch.local_rank, 3);
}

TEST(LaunchEnv, SlurmFallsBackToJobTaskCount) {
  const LaunchEnv launch = detect({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}});
  EXPECT_EQ(launch.world_size, 2);
}

TEST(LaunchEnv, MpirunInsideSlurmBatchScriptUsesMpiRank) {
  // The batch script's SLURM_PROCID=0 is inherited by every rank mpirun starts.
  const LaunchEnv launch = detect({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"},
                                   {"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"}});
  EXPECT_EQ(launch.source, LaunchSource::OpenMpi);
  EXPECT_EQ(launch.rank, 3);
}

TEST(LaunchEnv, ShardloraLaunchBeatsSlurm) {
  const LaunchEnv launch = detect({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"},
                                   {"SHARDLORA_RANK", "6"}, {"SHARDLORA_WORLD_SIZE", "8"},
                                   {"SHARDLORA_LOCAL_RANK", "2"}, {"SHARDLORA_LOCAL_WORLD_SIZE", "4"}});
  EXPECT_EQ(launch.source, LaunchSource::ShardloraLaunch);
  EXPECT_EQ(launch.rank, 6);
  EXPECT_EQ(launch.local_rank, 2);
}

TEST(LaunchEnv, BadValuesNameTheVariable) {
  EXPECT_NE(error_of({{"OMPI_COMM_WORLD_RANK", "one"}, {"OMPI_COMM_WORLD_SIZE", "2"}})
                .find("OMPI_COMM_WORLD_RANK='one'"), std::string::npos);
  EXPECT_NE(error_of({{"PMI_RANK", "-1"}, {"PMI_SIZE", "2"}}).find("PMI_RANK"), std::string::npos);
  EXPECT_NE(error_of({{"PMI_RANK", "2"}, {"PMI_SIZE", "2"}}).find("PMI_RANK=2 is not a rank"),
            std::string::npos);
  EXPECT_NE(error_of({{"OMPI_COMM_WORLD_RANK", "0"}}).find("OMPI_COMM_WORLD_SIZE"), std::string::npos);
  EXPECT_NE(error_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "3"},
                      {"SLURM_NTASKS_PER_NODE", "2"}}).find("SLURM_LOCALID=3"), std::string::npos);
  EXPECT_NE(error_of({{"SHARDLORA_RANK", "99999999999"}, {"SHARDLORA_WORLD_SIZE", "2"}})
                .find("SHARDLORA_RANK"), std::string::npos);
}

TEST(RankDevice, TheLocalRankNumbersTheGpuNeverTheGlobalRank) {
  // Rank 6 of 8 on the second node of two with 4 GPUs each: GPU 2 (6 % 4 happens to agree);
  // rank 5 of 8 placed 3 per node (local rank 2): GPU 2, where rank % GPUs would give 1.
  const LaunchEnv sixth = detect({{"OMPI_COMM_WORLD_RANK", "6"}, {"OMPI_COMM_WORLD_SIZE", "8"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "2"}});
  EXPECT_EQ(rank_device("cuda", sixth, 4), torch::Device(torch::kCUDA, 2));
  const LaunchEnv fifth = detect({{"OMPI_COMM_WORLD_RANK", "5"}, {"OMPI_COMM_WORLD_SIZE", "8"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "2"}});
  EXPECT_EQ(rank_device("auto", fifth, 4), torch::Device(torch::kCUDA, 2));
}

TEST(RankDevice, AutoTrainsOnTheCpuWithoutAGpuAndCpuAlwaysDoes) {
  const LaunchEnv single = detect({});
  EXPECT_EQ(rank_device("auto", single, 0), torch::Device(torch::kCPU));
  EXPECT_EQ(rank_device("cpu", single, 8), torch::Device(torch::kCPU));
  EXPECT_EQ(rank_device("auto", single, 8), torch::Device(torch::kCUDA, 0));
}

TEST(RankDevice, SlurmsOneBoundGpuServesAnyLocalRank) {
  // srun --gpus-per-task=1: local rank 3 sees only its own GPU, as device 0.
  const LaunchEnv task = detect({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "3"}});
  EXPECT_EQ(rank_device("cuda", task, 1), torch::Device(torch::kCUDA, 0));
}

TEST(RankDevice, ALocalRankWithoutAGpuIsAnErrorNamingIt) {
  const LaunchEnv third = detect({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "3"}});
  const std::string error = device_error("cuda", third, 2);
  EXPECT_NE(error.find("local rank 3 (rank 3 of 4) has no GPU of its own: this process sees 2"), std::string::npos) << error;
  EXPECT_NE(error.find("training.device=cpu"), std::string::npos) << error;
  EXPECT_NE(device_error("auto", third, 1).find("has no GPU of its own"), std::string::npos) << "one GPU is shared only under Slurm";
  EXPECT_NE(device_error("cuda", detect({}), 0).find("training.device is cuda, but this process sees no GPU"), std::string::npos);
  EXPECT_NE(device_error("gpu", detect({}), 1).find("training.device 'gpu' is not one of auto, cpu, cuda"), std::string::npos);
}
