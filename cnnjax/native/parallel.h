// Work splitting on XLA's intra-op thread pool, shared by the native kernels.
#ifndef CNNJAX_NATIVE_PARALLEL_H_
#define CNNJAX_NATIVE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace cnnjax {

struct Work {
  std::function<void(int64_t)> fn;
  int64_t total;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

inline void RunItems(Work& work) {
  for (int64_t item; (item = work.next.fetch_add(1)) < work.total;) {
    work.fn(item);
    work.done.fetch_add(1, std::memory_order_release);
  }
}

// Runs fn(0..total-1) on the calling thread and the pool. The caller waits only for
// items some thread has already taken, so a busy pool cannot deadlock it.
inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t total,
                        std::function<void(int64_t)> fn) {
  if (total <= 0) return;
  auto work = std::make_shared<Work>();
  work->fn = std::move(fn);
  work->total = total;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { RunItems(*work); });
  RunItems(*work);
  while (work->done.load(std::memory_order_acquire) < total) std::this_thread::yield();
}

}  // namespace cnnjax

#endif  // CNNJAX_NATIVE_PARALLEL_H_
