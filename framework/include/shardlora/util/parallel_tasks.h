// Independent tasks spread over a few threads that take the next task as they finish one
// (tokenizing samples varies 100x in cost, so fixed chunks would leave threads idle).
#pragma once

#include <cstdint>
#include <functional>

namespace shardlora {

// Runs task(0) .. task(count - 1), each once, on `threads` threads (the caller is one of
// them; 0: libtorch's intra-op thread count, which the rank's thread choice sets). The first
// exception a task throws is rethrown here after every thread has stopped; tasks not yet
// started are then skipped.
void run_parallel_tasks(int64_t count, int threads, const std::function<void(int64_t)>& task);

// The threads run_parallel_tasks uses for `threads` (0: libtorch's intra-op count).
int resolve_task_threads(int threads);

}  // namespace shardlora
