// `shardlora launch`: a torchrun-like supervisor. It starts --nproc-per-node copies of
// `shardlora COMMAND...` (or of PROGRAM..., when the first word is a path with a '/': a
// benchmark, a user's own binary) on this node with SHARDLORA_RANK / _WORLD_SIZE / _LOCAL_RANK /
// _LOCAL_WORLD_SIZE set, serves the job's rendezvous store (node 0) and hands every rank its
// address and token. It forwards SIGINT / SIGTERM to the ranks (which checkpoint and stop),
// and when a rank fails it names it, stops the others (SIGTERM, then SIGKILL after
// --grace-s) and exits with the first failing rank's status (128 + signal when killed).
// Ranks die with the launcher (PR_SET_PDEATHSIG), so none is left behind.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <optional>

#include "commands.h"
#include "shardlora/cluster/env_vars.h"
#include "shardlora/cluster/tcp_store.h"
#include "shardlora/kernels/check.h"

namespace shardlora::launcher {
namespace {

using Clock = std::chrono::steady_clock;

struct LaunchArgs {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string rdzv;  // HOST:PORT of node 0's store; empty: this host, a port the OS picks
  double grace_s = 30;
  std::vector<std::string> command;
};

std::string self_executable() {
  char path[4096] = {};
  const ssize_t length = ::readlink("/proc/self/exe", path, sizeof path - 1);
  SHARDLORA_CHECK(length > 0, "cannot find the shardlora executable (/proc/self/exe): ", std::strerror(errno));
  return std::string(path, static_cast<size_t>(length));
}

std::string describe_status(int status) {
  if (WIFSIGNALED(status)) return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  return "exited with status " + std::to_string(WEXITSTATUS(status));
}

int exit_code_of(int status) { return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status); }

// The job token: the environment's when set (every node must share one), else a fresh one.
std::string launch_token(int nnodes) {
  if (std::getenv(env::kStoreToken) || std::getenv(env::kStoreTokenFile)) return cluster::job_token_from_environment();
  SHARDLORA_CHECK(nnodes == 1, "--nnodes ", nnodes, ": the nodes must share the job token; set ", env::kStoreTokenFile,
                  " to a file every node can read (or ", env::kStoreToken, ")");
  return cluster::random_token();
}

class Ranks {
 public:
  // Starts every local rank; the environment is built before fork (only exec follows it).
  Ranks(const LaunchArgs& args, const std::string& store_address, const std::string& token) {
    const bool program = args.command.front().find('/') != std::string::npos;
    const std::string exe = program ? args.command.front() : self_executable();
    std::vector<std::string> argv = {exe};
    argv.insert(argv.end(), args.command.begin() + (program ? 1 : 0), args.command.end());
    const int world = args.nnodes * args.nproc_per_node;
    for (int local = 0; local < args.nproc_per_node; ++local) {
      const int rank = args.node_rank * args.nproc_per_node + local;
      std::vector<std::string> environment;
      for (char** entry = environ; *entry; ++entry) {
        const std::string text = *entry;
        const bool ours = text.rfind("SHARDLORA_RANK=", 0) == 0 || text.rfind("SHARDLORA_WORLD_SIZE=", 0) == 0 ||
                          text.rfind("SHARDLORA_LOCAL_", 0) == 0 || text.rfind("SHARDLORA_STORE_", 0) == 0;
        if (!ours) environment.push_back(text);
      }
      for (const auto& [name, value] : std::map<std::string, std::string>{
               {env::kLaunchRank, std::to_string(rank)}, {env::kLaunchWorldSize, std::to_string(world)},
               {env::kLaunchLocalRank, std::to_string(local)}, {env::kLaunchLocalWorldSize, std::to_string(args.nproc_per_node)},
               {env::kStoreAddress, store_address}, {env::kStoreToken, token}}) {
        environment.push_back(name + "=" + value);
      }
      spawn(exe, argv, environment, rank);
    }
  }

  // Supervises until every rank has exited; returns the launcher's exit status.
  int supervise(const sigset_t& signals, double grace_s) {
    std::optional<int> first_failure;
    Clock::time_point kill_at = Clock::time_point::max();  // max: no kill pending
    int stop_requests = 0;
    while (!pids_.empty()) {
      timespec tick{0, 100 * 1000 * 1000};
      const int signal = ::sigtimedwait(&signals, nullptr, &tick);
      if (signal == SIGINT || signal == SIGTERM) {
        // First: pass it on (ranks checkpoint and stop together); again: stop now.
        ++stop_requests;
        signal_all(stop_requests == 1 ? signal : SIGKILL);
      }
      // Ranks that died together (one killed, its peers losing it) are reaped in no
      // particular order: the killed one is the cause, then the lowest rank.
      std::vector<std::pair<int, int>> failed;  // rank, status
      int status = 0;
      for (pid_t pid; (pid = ::waitpid(-1, &status, WNOHANG)) > 0;) {
        const auto it = pids_.find(pid);
        if (it == pids_.end()) continue;
        if (exit_code_of(status) != 0) failed.emplace_back(it->second, status);
        pids_.erase(it);
      }
      std::stable_sort(failed.begin(), failed.end(), [](const auto& a, const auto& b) {
        return std::make_pair(!WIFSIGNALED(a.second), a.first) < std::make_pair(!WIFSIGNALED(b.second), b.first);
      });
      for (const auto& [rank, how] : failed) std::cerr << "shardlora launch: rank " << rank << " " << describe_status(how) << std::endl;
      if (!failed.empty() && !first_failure) {
        first_failure = exit_code_of(failed.front().second);
        if (!pids_.empty()) {
          std::cerr << "shardlora launch: stopping the other " << pids_.size() << " rank(s)" << std::endl;
          signal_all(SIGTERM);
          kill_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(grace_s));
        }
      }
      if (Clock::now() > kill_at) {
        std::cerr << "shardlora launch: " << pids_.size() << " rank(s) still running after " << grace_s << " s: killing them" << std::endl;
        signal_all(SIGKILL);
        kill_at = Clock::time_point::max();
      }
    }
    return first_failure.value_or(0);
  }

 private:
  void spawn(const std::string& exe, const std::vector<std::string>& argv, const std::vector<std::string>& environment, int rank) {
    std::vector<char*> args, envp;
    for (const auto& word : argv) args.push_back(const_cast<char*>(word.c_str()));
    args.push_back(nullptr);
    for (const auto& entry : environment) envp.push_back(const_cast<char*>(entry.c_str()));
    envp.push_back(nullptr);
    const std::string exec_failed = "shardlora launch: cannot execute " + exe + "\n";  // built before fork
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    SHARDLORA_CHECK(pid >= 0, "cannot start rank ", rank, ": fork: ", std::strerror(errno));
    if (pid == 0) {
      // Own process group: a terminal's Ctrl-C reaches the launcher only, which forwards it once.
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::execve(exe.c_str(), args.data(), envp.data());
      [[maybe_unused]] const ssize_t ignored = ::write(2, exec_failed.data(), exec_failed.size());
      ::_exit(127);
    }
    pids_[pid] = rank;
  }

  void signal_all(int signal) {
    for (const auto& [pid, rank] : pids_) ::kill(pid, signal);
  }

  std::map<pid_t, int> pids_;  // live ranks
};

int run_launch(const LaunchArgs& args) {
  SHARDLORA_CHECK(args.nproc_per_node >= 1, "--nproc-per-node must be at least 1");
  SHARDLORA_CHECK(args.nnodes >= 1 && args.node_rank >= 0 && args.node_rank < args.nnodes, "--node-rank ", args.node_rank,
                  " is not a node of --nnodes ", args.nnodes);
  SHARDLORA_CHECK(args.nnodes == 1 || !args.rdzv.empty(), "--nnodes ", args.nnodes, " needs --rdzv HOST:PORT (node 0's address)");
  SHARDLORA_CHECK(!args.command.empty(), "nothing to launch: give a shardlora command after --, e.g. -- train recipe.yaml");
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  if (!args.rdzv.empty()) {
    const auto colon = args.rdzv.rfind(':');
    const int parsed = colon == std::string::npos ? -1 : std::atoi(args.rdzv.c_str() + colon + 1);
    SHARDLORA_CHECK(colon != std::string::npos && colon > 0 && parsed > 0 && parsed < 65536, "--rdzv '", args.rdzv,
                    "' is not HOST:PORT");
    host = args.rdzv.substr(0, colon);
    port = static_cast<uint16_t>(parsed);
  }
  const std::string token = launch_token(args.nnodes);
  // Signals are taken synchronously (sigtimedwait) from here on; ranks unblock them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  ::sigprocmask(SIG_BLOCK, &signals, nullptr);
  std::unique_ptr<cluster::TcpStoreServer> store;
  if (args.node_rank == 0) {
    // One node: loopback only. Several: every interface, or SHARDLORA_STORE_BIND's.
    const char* bind = std::getenv(env::kStoreBind);
    const std::string interface = bind && *bind ? bind : args.rdzv.empty() ? "127.0.0.1" : "0.0.0.0";
    store = std::make_unique<cluster::TcpStoreServer>(cluster::TcpStoreServerOptions{interface, port, token});
    port = store->port();
  }
  Ranks ranks(args, host + ":" + std::to_string(port), token);
  return ranks.supervise(signals, args.grace_s);
}

}  // namespace

Subcommand add_launch_command(CLI::App& root) {
  auto args = std::make_shared<LaunchArgs>();
  CLI::App* app = root.add_subcommand("launch", "Spawn and supervise local ranks (torchrun-style): shardlora launch --nproc-per-node N -- train RECIPE");
  app->add_option("--nproc-per-node", args->nproc_per_node, "Ranks to start on this node")->required()->check(CLI::PositiveNumber);
  app->add_option("--nnodes", args->nnodes, "Nodes in the job (each runs shardlora launch)")->check(CLI::PositiveNumber);
  app->add_option("--node-rank", args->node_rank, "This node's index, 0 hosts the rendezvous store")->check(CLI::NonNegativeNumber);
  app->add_option("--rdzv", args->rdzv, "HOST:PORT of node 0's rendezvous store (several nodes)");
  app->add_option("--grace-s", args->grace_s, "Seconds the other ranks get to stop after one fails, before SIGKILL")
      ->check(CLI::NonNegativeNumber);
  app->add_option("COMMAND", args->command, "The shardlora command each rank runs, after -- (or a program: a path with a '/')")->required();
  return {app, [args] { return run_launch(*args); }};
}

}  // namespace shardlora::launcher
