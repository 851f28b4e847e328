// Shared by avemo's native CPU kernels (lstm_cpu.cc, attention_cpu.cc, random_cpu.cc): XLA's
// tanh, 16-float vectors, and a parallel loop over XLA's intra-op thread pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace avemo_native {

namespace ffi = xla::ffi;

// Eigen's ptanh_float (what XLA CPU emits for tanh): a 13/6 rational approximation on [-c, c],
// for a float or, lane by lane, a vector of them (`vf` below).
template <typename T>
inline T tanh_t(T x) {
  const T c = T{} + 7.90531110763549805f;
  T xc = x > c ? c : x;
  xc = xc < -c ? -c : xc;
  const T x2 = xc * xc;
  T p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * xc;
  T q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  const T r = p / q;
  const T ax = x < 0.0f ? -x : x;
  return ax < 0.0004f ? x : r;
}

inline float tanh_r(float x) { return tanh_t(x); }

// A vector of 16 floats (GCC/Clang vector extension: one AVX-512 register, two AVX2 ones, four
// SSE ones; the compiler picks the instructions of the machine it builds for).
typedef float vf __attribute__((vector_size(64)));
constexpr int64_t kW = 16;

// Unaligned loads and stores of a vector type V of floats (memcpy: one vector move).
template <typename V>
inline V load_as(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
inline void store_as(float* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

inline vf loadv(const float* p) { return load_as<vf>(p); }
inline void storev(float* p, vf v) { store_as(p, v); }
inline vf splat(float x) { return vf{} + x; }

// Runs fn(0) .. fn(total - 1) on the calling thread and up to `pool.num_threads()` helpers of
// XLA's intra-op thread pool. The caller claims work too and waits only for items a helper has
// claimed, so it never waits on a helper that has not started (no deadlock when every pool
// thread is busy, e.g. inside another of these calls); a helper that starts after all items
// are claimed returns at once.
struct Work {
  std::atomic<int64_t> next{0}, done{0};
  int64_t total = 0;
  std::function<void(int64_t)> fn;
  void drain() {
    for (int64_t i; (i = next.fetch_add(1)) < total;) {
      fn(i);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

template <typename F>
void parallel_for(ffi::ThreadPool& pool, int64_t total, F fn) {
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total - 1);
  if (helpers <= 0) {
    for (int64_t i = 0; i < total; ++i) fn(i);
    return;
  }
  auto work = std::make_shared<Work>();
  work->total = total;
  work->fn = fn;
  for (int64_t k = 0; k < helpers; ++k) pool.Schedule([work] { work->drain(); });
  work->drain();
  while (work->done.load(std::memory_order_acquire) < total) std::this_thread::yield();
}

}  // namespace avemo_native
