// A fault-injection shim for tests, loaded with LD_PRELOAD into a shardlora process. It
// wraps the calls through which files are written, published and removed, and reads what
// to break from the environment:
//
//   SHARDLORA_FAULT_ENOSPC=GLOB   write/pwrite to a file whose path matches GLOB fail with
//                                 ENOSPC (a full disk at exactly that file)
//   SHARDLORA_FAULT_ARM=GLOB      counting starts at the first call on a path matching GLOB
//   SHARDLORA_FAULT_SCOPE=GLOB    only calls on paths matching GLOB count (default: all)
//   SHARDLORA_FAULT_KILL_AT=N     the process SIGKILLs itself just before the Nth counted call
//   SHARDLORA_FAULT_STOP_AT_OPEN=GLOB  the process SIGSTOPs itself when it opens a matching
//                                 path (a rank frozen while it loads the model)
//   SHARDLORA_FAULT_ONLY_IF=NAME=VALUE  faults only in a process whose variable NAME is VALUE
//                                 (one rank of those mpirun starts)
//
// Counted calls: write, pwrite, fsync, fdatasync, mkdir, rename, renameat, unlink,
// unlinkat, rmdir, remove; a run of writes to one file counts once (a kill between two of
// them cuts the file as a kill before the first does). Before dying it says which call on
// stderr, so a test can tell which point it cut.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static atomic_int armed;
static atomic_long counted;
static char last_written[PATH_MAX];  // the file the previous counted call wrote, if it was a write

// SHARDLORA_FAULT_ONLY_IF holds for this process (or is not set).
static int chosen_process(void) {
  const char* condition = getenv("SHARDLORA_FAULT_ONLY_IF");
  if (!condition || !*condition) return 1;
  const char* equals = strchr(condition, '=');
  if (!equals) return 0;
  char name[256];
  snprintf(name, sizeof name, "%.*s", (int)(equals - condition), condition);
  const char* value = getenv(name);
  return value && strcmp(value, equals + 1) == 0;
}

static int matches(const char* pattern_variable, const char* path) {
  const char* pattern = getenv(pattern_variable);
  return pattern && *pattern && path && fnmatch(pattern, path, 0) == 0 && chosen_process();
}

static void fd_path(int fd, char* path, size_t size) {
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(link, path, size - 1);
  path[n > 0 ? n : 0] = '\0';
}

static void dir_fd_path(int dirfd, const char* name, char* path, size_t size) {
  if (name[0] == '/' || dirfd == AT_FDCWD) {
    snprintf(path, size, "%s", name);
    return;
  }
  char dir[PATH_MAX];
  fd_path(dirfd, dir, sizeof dir);
  snprintf(path, size, "%s/%s", dir, name);
}

// Counts the call when armed and in scope; SIGKILL at the chosen one.
static void fault_point(const char* op, const char* path) {
  const char* kill_at = getenv("SHARDLORA_FAULT_KILL_AT");
  if (!kill_at || !path) return;
  if (!atomic_load(&armed)) {
    if (!matches("SHARDLORA_FAULT_ARM", path)) return;
    atomic_store(&armed, 1);
  }
  const char* scope = getenv("SHARDLORA_FAULT_SCOPE");
  if (scope && *scope && fnmatch(scope, path, 0) != 0) return;
  const int writing = strcmp(op, "write") == 0 || strcmp(op, "pwrite") == 0;
  if (writing && strcmp(last_written, path) == 0) return;
  snprintf(last_written, sizeof last_written, "%s", writing ? path : "");
  if (atomic_fetch_add(&counted, 1) + 1 == atol(kill_at)) {
    char line[PATH_MAX + 96];
    const int n = snprintf(line, sizeof line, "fault-injection: SIGKILL before %s %s\n", op, path);
    syscall(SYS_write, 2, line, (size_t)(n > 0 ? n : 0));
    kill(getpid(), SIGKILL);
  }
}

#define REAL(name)                  \
  static __typeof__(&name) real_##name; \
  if (!real_##name) real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name)

// write or pwrite to `fd`: the fault point, then ENOSPC when the file is the chosen one.
static int before_write(int fd, const char* op) {
  char path[PATH_MAX];
  fd_path(fd, path, sizeof path);
  if (path[0] != '/') return 0;  // pipes, sockets
  fault_point(op, path);
  if (matches("SHARDLORA_FAULT_ENOSPC", path)) {
    errno = ENOSPC;
    return -1;
  }
  return 0;
}

ssize_t write(int fd, const void* data, size_t size) {
  REAL(write);
  if (before_write(fd, "write") != 0) return -1;
  return real_write(fd, data, size);
}

ssize_t pwrite(int fd, const void* data, size_t size, off_t offset) {
  REAL(pwrite);
  if (before_write(fd, "pwrite") != 0) return -1;
  return real_pwrite(fd, data, size, offset);
}

ssize_t pwrite64(int fd, const void* data, size_t size, off_t offset) {
  REAL(pwrite64);
  if (before_write(fd, "pwrite") != 0) return -1;
  return real_pwrite64(fd, data, size, offset);
}

static void fd_fault_point(const char* op, int fd) {
  char path[PATH_MAX];
  fd_path(fd, path, sizeof path);
  fault_point(op, path);
}

int fsync(int fd) {
  REAL(fsync);
  fd_fault_point("fsync", fd);
  return real_fsync(fd);
}

int fdatasync(int fd) {
  REAL(fdatasync);
  fd_fault_point("fdatasync", fd);
  return real_fdatasync(fd);
}

int mkdir(const char* path, mode_t mode) {
  REAL(mkdir);
  fault_point("mkdir", path);
  return real_mkdir(path, mode);
}

int rename(const char* from, const char* to) {
  REAL(rename);
  fault_point("rename", from);
  return real_rename(from, to);
}

int renameat(int from_dir, const char* from, int to_dir, const char* to) {
  REAL(renameat);
  char path[PATH_MAX];
  dir_fd_path(from_dir, from, path, sizeof path);
  fault_point("rename", path);
  return real_renameat(from_dir, from, to_dir, to);
}

int unlink(const char* path) {
  REAL(unlink);
  fault_point("unlink", path);
  return real_unlink(path);
}

int unlinkat(int dir, const char* name, int flags) {
  REAL(unlinkat);
  char path[PATH_MAX];
  dir_fd_path(dir, name, path, sizeof path);
  fault_point("unlink", path);
  return real_unlinkat(dir, name, flags);
}

int rmdir(const char* path) {
  REAL(rmdir);
  fault_point("rmdir", path);
  return real_rmdir(path);
}

int remove(const char* path) {
  REAL(remove);
  fault_point("remove", path);
  return real_remove(path);
}

// open and openat: SIGSTOP when the path is the chosen one.
static void before_open(const char* path) {
  if (!matches("SHARDLORA_FAULT_STOP_AT_OPEN", path)) return;
  char line[PATH_MAX + 64];
  const int n = snprintf(line, sizeof line, "fault-injection: SIGSTOP at open %s\n", path);
  syscall(SYS_write, 2, line, (size_t)(n > 0 ? n : 0));
  kill(getpid(), SIGSTOP);
}

// The mode argument exists only when the flags create a file.
static mode_t mode_of(int flags, va_list args) {
  return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(args, int) : 0;
}

// open and open64 are two symbols for one call.
#define OPEN_WRAPPER(name)                          \
  int name(const char* path, int flags, ...) {      \
    REAL(name);                                     \
    va_list args;                                   \
    va_start(args, flags);                          \
    const mode_t mode = mode_of(flags, args);       \
    va_end(args);                                   \
    before_open(path);                              \
    return real_##name(path, flags, mode);          \
  }
OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)

int openat(int dir, const char* name, int flags, ...) {
  REAL(openat);
  va_list args;
  va_start(args, flags);
  const mode_t mode = mode_of(flags, args);
  va_end(args);
  char path[PATH_MAX];
  dir_fd_path(dir, name, path, sizeof path);
  before_open(path);
  return real_openat(dir, name, flags, mode);
}
