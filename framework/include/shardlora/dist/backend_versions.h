// Versions of the communication libraries linked in (NCCL on GPUs, MPI on CPUs).
#pragma once

#include <string>

namespace shardlora::dist {

bool nccl_compiled();
// "major.minor.patch" of the NCCL library loaded at run time; empty without NCCL.
std::string nccl_version();
// The first line of MPI_Get_library_version (callable before MPI_Init).
std::string mpi_library_version();

}  // namespace shardlora::dist
