// Run under mpirun: the rank, world size and local rank read from the environment must be
// the ones MPI itself assigns (local rank = rank within MPI_COMM_TYPE_SHARED).
#include <gtest/gtest.h>
#include <mpi.h>

#include "shardlora/cluster/launch_env.h"

TEST(LaunchEnvUnderMpi, MatchesMpiCommWorld) {
  int rank = -1, size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  int local_rank = -1, local_size = -1;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_size(node, &local_size);
  MPI_Comm_free(&node);

  const auto launch = shardlora::cluster::detect_launch_env();
  EXPECT_EQ(launch.rank, rank);
  EXPECT_EQ(launch.world_size, size);
  EXPECT_EQ(launch.local_rank, local_rank);
  EXPECT_EQ(launch.local_world_size, local_size);
  EXPECT_GE(size, 2) << "run this test through mpirun -np N with N >= 2";
}
