// skv/threads.hpp: how many OpenMP threads a call runs on (host only). Every threaded entry point
// (append, decode, prefill, their batched forms and the dense baselines) resolves its
// `num_threads` option here and nowhere else.
//
//   0          every OpenMP thread (omp_get_max_threads())
//   n > 0      n threads, at most the OpenMP thread limit and at most kMaxThreads (or the
//              processor count when that is larger): libgomp builds a team's bookkeeping on the
//              stack, and a team of tens of thousands overflows it
//   n < 0      an skv::Error
//
// After fork(): libgomp's worker threads do not exist in a child process, and a parallel region
// in a child of a process that already ran one never returns. When skv has run a team, a child
// made by fork() therefore runs every call on its calling thread (results are the same; only the
// speed differs). A child that exec()s, or a process started by multiprocessing's "spawn" or
// "forkserver" method, is a fresh process and uses threads again.
#pragma once

#include <algorithm>
#include <atomic>
#include <string>

#include <skv/config.hpp>
#include <skv/error.hpp>

#if defined(SKV_HAS_OPENMP)
#include <omp.h>
#endif
#if defined(SKV_HAS_OPENMP) && SKV_HAS_PTHREAD_ATFORK
#include <pthread.h>
#endif

namespace skv {

/// The most threads one call uses, unless the machine has more processors than this.
constexpr int kMaxThreads = 512;

namespace detail {

struct ThreadState {
  std::atomic<bool> team_started{false};  ///< this process has run a parallel region of > 1 thread
  std::atomic<bool> forked{false};        ///< a fork() child of a process that had started a team
};

inline ThreadState& thread_state() {
  static ThreadState state;
  return state;
}

#if defined(SKV_HAS_OPENMP) && SKV_HAS_PTHREAD_ATFORK
/// Registers, once per process, the fork handler that marks a child whose parent had run a team.
inline void watch_fork() {
  static const bool registered = [] {
    pthread_atfork(nullptr, nullptr, [] {
      ThreadState& s = thread_state();
      if (s.team_started.load(std::memory_order_relaxed)) s.forked.store(true, std::memory_order_relaxed);
    });
    return true;
  }();
  (void)registered;
}
#endif

/// The team size for a call that asked for `requested` threads (`what` names the caller in errors).
inline int resolve_threads(int requested, const char* what) {
  require(requested >= 0, std::string(what) + ": num_threads must not be negative (" + std::to_string(requested) +
                              "; 0 means every OpenMP thread)");
#if defined(SKV_HAS_OPENMP)
#if SKV_HAS_PTHREAD_ATFORK
  watch_fork();
#endif
  ThreadState& s = thread_state();
  if (s.forked.load(std::memory_order_relaxed)) return 1;
  int n = requested > 0 ? requested : omp_get_max_threads();
  n = std::min(n, std::max(kMaxThreads, omp_get_num_procs()));
  n = std::max(1, std::min(n, omp_get_thread_limit()));
  if (n > 1) s.team_started.store(true, std::memory_order_relaxed);
  return n;
#else
  return 1;
#endif
}

}  // namespace detail
}  // namespace skv
