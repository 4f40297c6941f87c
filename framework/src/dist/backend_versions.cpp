#include "shardlora/dist/backend_versions.h"

#include <mpi.h>

#ifdef SHARDLORA_WITH_NCCL
#include <nccl.h>
#endif

namespace shardlora::dist {

bool nccl_compiled() {
#ifdef SHARDLORA_WITH_NCCL
  return true;
#else
  return false;
#endif
}

std::string nccl_version() {
#ifdef SHARDLORA_WITH_NCCL
  int code = 0;
  if (ncclGetVersion(&code) != ncclSuccess) return "unknown";
  // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
  return std::to_string(code / 10000) + "." + std::to_string(code / 100 % 100) + "." +
         std::to_string(code % 100);
#else
  return {};
#endif
}

std::string mpi_library_version() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  if (MPI_Get_library_version(text, &length) != MPI_SUCCESS) return "unknown";
  std::string version(text, static_cast<size_t>(length));
  const auto line_end = version.find_first_of("\r\n");
  if (line_end != std::string::npos) version.resize(line_end);
  while (!version.empty() && (version.back() == ',' || version.back() == ' ' || version.back() == '\0')) {
    version.pop_back();
  }
  return version;
}

}  // namespace shardlora::dist
