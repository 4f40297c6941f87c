// Every environment variable shardlora reads, declared once (grep here, not the code base).
#pragma once

namespace shardlora::env {

// OpenMPI's mpirun/mpiexec, set per process.
inline constexpr const char kOmpiRank[] = "OMPI_COMM_WORLD_RANK";
inline constexpr const char kOmpiSize[] = "OMPI_COMM_WORLD_SIZE";
inline constexpr const char kOmpiLocalRank[] = "OMPI_COMM_WORLD_LOCAL_RANK";
inline constexpr const char kOmpiLocalSize[] = "OMPI_COMM_WORLD_LOCAL_SIZE";

// MPICH / Intel MPI (Hydra process manager, PMI-1/2), set per process.
inline constexpr const char kPmiRank[] = "PMI_RANK";
inline constexpr const char kPmiSize[] = "PMI_SIZE";
inline constexpr const char kMpichLocalRank[] = "MPI_LOCALRANKID";
inline constexpr const char kMpichLocalSize[] = "MPI_LOCALNRANKS";

// Slurm. SLURM_PROCID is also visible in a batch script and inherited by anything that
// script starts (mpirun's children too), so Slurm is consulted after the MPI launchers.
inline constexpr const char kSlurmProcId[] = "SLURM_PROCID";
inline constexpr const char kSlurmStepNumTasks[] = "SLURM_STEP_NUM_TASKS";  // srun steps only
inline constexpr const char kSlurmNtasks[] = "SLURM_NTASKS";
inline constexpr const char kSlurmLocalId[] = "SLURM_LOCALID";
inline constexpr const char kSlurmNtasksPerNode[] = "SLURM_NTASKS_PER_NODE";

// `shardlora launch` sets these for the ranks it spawns (torchrun-style).
inline constexpr const char kLaunchRank[] = "SHARDLORA_RANK";
inline constexpr const char kLaunchWorldSize[] = "SHARDLORA_WORLD_SIZE";
inline constexpr const char kLaunchLocalRank[] = "SHARDLORA_LOCAL_RANK";
inline constexpr const char kLaunchLocalWorldSize[] = "SHARDLORA_LOCAL_WORLD_SIZE";

// The rendezvous store (cluster/tcp_store.h): rank 0 serves it, every rank connects.
inline constexpr const char kStoreAddress[] = "SHARDLORA_STORE_ADDR";        // host:port of rank 0's store
inline constexpr const char kStoreBind[] = "SHARDLORA_STORE_BIND";           // interface rank 0 listens on
inline constexpr const char kStoreToken[] = "SHARDLORA_STORE_TOKEN";         // the job's secret
inline constexpr const char kStoreTokenFile[] = "SHARDLORA_STORE_TOKEN_FILE";  // or a file holding it

}  // namespace shardlora::env
