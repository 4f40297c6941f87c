// A CPU communicator over plain TCP sockets, for jobs started without MPI (shardlora launch
// on machines without an MPI launcher, or a CPU run that prefers it): every rank listens on
// an OS-chosen port, publishes host:port in the Store, and connects to the next rank of a
// ring; the previous rank connects to it. A connection opens with the job token and the
// sender's rank, so a stray client is dropped.
//
// Collectives are ring algorithms (bandwidth-optimal for large messages): all-reduce =
// reduce-scatter then all-gather over N chunks, 2(N-1)/N of the data sent per rank, the
// figure nccl-tests' busBW assumes. They run on one worker thread in issue order, so
// *_async calls overlap with the caller's compute (the gradient buckets rely on that), and
// each send / receive has the communicator's deadline: a peer that stops sending becomes a
// TimeoutError, a peer that exits an Error naming its rank, within the timeout.
#pragma once

#include <memory>
#include <string>

#include "shardlora/dist/communicator.h"
#include "shardlora/dist/store.h"

namespace shardlora::cluster {

struct TcpCommunicatorOptions {
  int rank = 0, world_size = 1;
  std::string token;               // the job token, presented on every ring connection
  std::string advertise_host;      // how the other ranks reach this one (an address or hostname)
  dist::Milliseconds timeout{300000};  // setup (rendezvous, connecting) and every collective
  std::string key_prefix = "tcp";  // store keys, so several communicators can share a store
};

// Collective over the store: every rank constructs one with the same options but its rank.
std::unique_ptr<dist::Communicator> make_tcp_communicator(dist::Store& store, const TcpCommunicatorOptions& options);

}  // namespace shardlora::cluster
