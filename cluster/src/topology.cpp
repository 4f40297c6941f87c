#include "shardlora/cluster/topology.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "shardlora/dist/backend_versions.h"
#include "shardlora/kernels/check.h"

namespace shardlora::cluster {
namespace {

// One rank's row in the all-gather: its host name (up to 255 bytes, as gethostname allows)
// and its device label, each NUL-padded.
constexpr int64_t kHostBytes = 256, kDeviceBytes = 96, kRowBytes = kHostBytes + kDeviceBytes;

std::string plural(size_t count, const char* noun) { return std::to_string(count) + " " + noun + (count == 1 ? "" : "s"); }

// Under Slurm's per-task GPU binding every rank sees its GPU as cuda:0; the visible set
// tells them apart. A CPU rank shows the threads it computes with.
std::string device_label(torch::Device device) {
  std::string label = device.str();
  if (device.is_cpu()) label += " (" + plural(static_cast<size_t>(at::get_num_threads()), "thread") + ")";
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  if (device.is_cuda() && visible && *visible) label += std::string(" (CUDA_VISIBLE_DEVICES=") + visible + ")";
  return label;
}

void put(torch::Tensor& row, int64_t offset, int64_t capacity, const std::string& text) {
  std::memcpy(row.data_ptr<uint8_t>() + offset, text.data(), std::min<size_t>(text.size(), static_cast<size_t>(capacity - 1)));
}

std::string get(const torch::Tensor& row, int64_t offset, int64_t capacity) {
  const auto* bytes = reinterpret_cast<const char*>(row.data_ptr<uint8_t>() + offset);
  return std::string(bytes, strnlen(bytes, static_cast<size_t>(capacity)));
}

// "0-3,6,8-9"
std::string rank_ranges(const std::vector<int>& ranks) {
  std::ostringstream text;
  for (size_t begin = 0; begin < ranks.size();) {
    size_t end = begin + 1;
    while (end < ranks.size() && ranks[end] == ranks[end - 1] + 1) ++end;
    text << (begin ? "," : "") << ranks[begin];
    if (end - begin > 1) text << "-" << ranks[end - 1];
    begin = end;
  }
  return text.str();
}

// "Open MPI v4.1.4, package: Debian OpenMPI, ..." -> "Open MPI v4.1.4"
std::string short_mpi_version(const std::string& version) { return version.substr(0, version.find(',')); }

constexpr size_t kNodesListed = 32;  // a 500-node job's start should not scroll away

}  // namespace

Topology gather_topology(dist::Communicator* comm, const LaunchEnv& launch, torch::Device device) {
  Topology topology;
  topology.launcher = launch_source_name(launch.source);
  topology.backend = comm ? comm->backend_name() : "none";
  topology.nccl_version = dist::nccl_version();
  topology.mpi_version = dist::mpi_library_version();
  const std::string label = device_label(device);
  if (!comm) {
    topology.ranks.push_back({launch.hostname, label});
    return topology;
  }
  torch::Tensor row = torch::zeros({kRowBytes}, torch::kUInt8);
  put(row, 0, kHostBytes, launch.hostname);
  put(row, kHostBytes, kDeviceBytes, label);
  torch::Tensor rows = torch::empty({comm->world_size(), kRowBytes}, torch::TensorOptions(torch::kUInt8).device(device));
  comm->allgather(row.to(device), rows);
  rows = rows.cpu();
  for (int rank = 0; rank < comm->world_size(); ++rank) {
    const torch::Tensor its = rows[rank];
    topology.ranks.push_back({get(its, 0, kHostBytes), get(its, kHostBytes, kDeviceBytes)});
  }
  return topology;
}

std::string describe_topology(const Topology& topology, const std::string& strategy) {
  SHARDLORA_CHECK(!topology.ranks.empty(), "describe_topology: no ranks");
  std::vector<std::string> hosts;  // in order of first rank
  std::vector<std::vector<int>> ranks_of;
  for (int rank = 0; rank < static_cast<int>(topology.ranks.size()); ++rank) {
    const std::string& host = topology.ranks[static_cast<size_t>(rank)].host;
    const auto at = std::find(hosts.begin(), hosts.end(), host) - hosts.begin();
    if (at == static_cast<long>(hosts.size())) {
      hosts.push_back(host);
      ranks_of.emplace_back();
    }
    ranks_of[static_cast<size_t>(at)].push_back(rank);
  }
  std::ostringstream text;
  if (topology.ranks.size() == 1) {
    text << "topology: 1 rank on " << hosts[0] << ", " << topology.ranks[0].device << ", " << topology.launcher << "\n";
    return text.str();
  }
  size_t fewest = topology.ranks.size(), most = 0;
  for (const auto& ranks : ranks_of) {
    fewest = std::min(fewest, ranks.size());
    most = std::max(most, ranks.size());
  }
  text << "topology: " << plural(topology.ranks.size(), "rank") << " on " << plural(hosts.size(), "node") << " (" << fewest;
  if (most != fewest) text << "-" << most;
  text << " per node, " << topology.launcher << "), backend " << topology.backend << ", strategy " << strategy << "; "
       << (topology.nccl_version.empty() ? "NCCL not compiled in" : "NCCL " + topology.nccl_version) << ", "
       << short_mpi_version(topology.mpi_version) << "\n";
  const size_t listed = std::min(hosts.size(), kNodesListed);
  size_t width = 0;
  for (size_t node = 0; node < listed; ++node) width = std::max(width, hosts[node].size());
  for (size_t node = 0; node < listed; ++node) {
    const auto& ranks = ranks_of[node];
    text << "  " << hosts[node] << std::string(width - hosts[node].size(), ' ') << "  " << (ranks.size() == 1 ? "rank " : "ranks ")
         << rank_ranges(ranks) << ":";
    const std::string& first = topology.ranks[static_cast<size_t>(ranks[0])].device;
    const bool alike_cpus = first.rfind("cpu", 0) == 0 && std::all_of(ranks.begin(), ranks.end(), [&](int r) {
      return topology.ranks[static_cast<size_t>(r)].device == first;
    });
    if (alike_cpus) {
      text << " " << first;
    } else {
      for (size_t i = 0; i < ranks.size(); ++i) text << (i ? ", " : " ") << topology.ranks[static_cast<size_t>(ranks[i])].device;
    }
    text << "\n";
  }
  if (hosts.size() > kNodesListed) text << "  ... and " << plural(hosts.size() - kNodesListed, "more node") << "\n";
  return text.str();
}

}  // namespace shardlora::cluster
