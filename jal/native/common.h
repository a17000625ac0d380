// Helpers shared by the native kernels: 8-lane float vectors (GCC/Clang vector
// extensions, lowered to AVX2 or whatever the target has) and a parallel loop on XLA's
// intra-op thread pool.

#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace jal {

namespace ffi = xla::ffi;

typedef float v8 __attribute__((vector_size(32)));

// LeNet's conv2: 32 input channels of 12x12, 64 output channels of 8x8, 5x5 taps.
constexpr int kIn = 32, kOut = 64, kSide = 12, kTap = 5, kConv = 8;
constexpr int kRowPad = 16;  // input rows padded to 64 bytes, so no 8-lane load crosses a cache line

inline v8 load8(const float* p) {
  v8 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

inline void store8(float* p, v8 v) { __builtin_memcpy(p, &v, sizeof v); }

inline v8 splat(float x) { return v8{x, x, x, x, x, x, x, x}; }

// max that propagates NaN, as XLA's does, so diverged weights give NaN here as there.
inline v8 vmax(v8 a, v8 b) { return (a != a) | (a > b) ? a : b; }

// (v1, v0, v3, v2, v5, v4, v7, v6): each lane's horizontal neighbour in its pair.
inline v8 swap_pairs(v8 v) {
#if defined(__clang__)
  return __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
#else  // GCC before 12 has only __builtin_shuffle
  typedef int32_t i8 __attribute__((vector_size(32)));
  return __builtin_shuffle(v, i8{1, 0, 3, 2, 5, 4, 7, 6});
#endif
}

// (a0, a2, a4, a6, b0, b2, b4, b6): the even lanes of a, then of b.
inline v8 even_lanes(v8 a, v8 b) {
#if defined(__clang__)
  return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
#else
  typedef int32_t i8 __attribute__((vector_size(32)));
  return __builtin_shuffle(a, b, i8{0, 2, 4, 6, 8, 10, 12, 14});
#endif
}

// Runs body(n) for n in [0, count) on the caller and the pool's threads. The caller waits
// for the work, not for the tasks: a task that starts after all work is taken finds none
// and returns, so a busy pool cannot deadlock the call.
template <typename Body>
void parallel_for(ffi::ThreadPool& pool, int64_t count, Body body) {
  struct Progress {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto progress = std::make_shared<Progress>();
  auto work = [progress, count, body] {
    for (int64_t n; (n = progress->next.fetch_add(1)) < count;) {
      body(n);
      if (progress->done.fetch_add(1) + 1 == count) {
        std::lock_guard<std::mutex> lock(progress->mutex);
        progress->finished.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(progress->mutex);
  progress->finished.wait(lock, [&] { return progress->done.load() == count; });
}

}  // namespace jal
