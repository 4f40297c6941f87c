// The NCCL backend: collectives on CUDA tensors of this rank's device, on a stream of the
// communicator's own, ordered after the work already queued on the default stream (an
// event) and waited for by the host with a deadline (an event query), so a hung peer turns
// into a TimeoutError and ncclCommAbort instead of a process stuck in a kernel.
// The communicator is created non-blocking: its initialization obeys the timeout too.
#pragma once

#include <memory>
#include <string>

#include "shardlora/dist/communicator.h"

namespace shardlora::dist {

bool nccl_available();  // this build has NCCL

// A fresh ncclUniqueId as bytes: made by rank 0 and handed to the others (Store or MPI).
std::string nccl_unique_id();

// Collective over `world_size` ranks; every rank passes the same id. Error when the build
// has no NCCL; TimeoutError when the ranks do not all arrive within `init_timeout`.
std::unique_ptr<Communicator> make_nccl_communicator(int rank, int world_size, int device, const std::string& unique_id,
                                                     Milliseconds init_timeout);

}  // namespace shardlora::dist
