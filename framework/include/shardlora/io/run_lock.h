// The lock of a run directory: one training process (rank 0 of a job) holds it while it
// trains there, so a second train, resume or overwrite of the same output.dir fails at once
// instead of two runs writing one directory. flock(2) on OUTPUT_DIR/.shardlora-lock: the
// kernel drops it when the holder dies (no stale locks after a SIGKILL), and NFS clients
// map it to a byte-range lock the server sees, so it holds across nodes sharing the
// directory. The file names its holder (host and PID) for the error.
#pragma once

#include <string>


namespace shardlora::io {

class RunDirectoryLock {
 public:
  static constexpr char kFileName[] = ".shardlora-lock";

  // Creates the directory when missing; Error naming the holder when another process has it.
  explicit RunDirectoryLock(const std::string& run_dir);
  // The Error the constructor would give now for a held directory, without taking the lock.
  static void check_free(const std::string& run_dir);
  ~RunDirectoryLock();
  RunDirectoryLock(const RunDirectoryLock&) = delete;
  RunDirectoryLock& operator=(const RunDirectoryLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace shardlora::io
