// The scores of the attention of Eq. (28) as two XLA FFI handlers for the CPU
// (avemo/models/attention.py, `SpatialAttention`):
//
//   avemo_attention_scores(keys [N, R, K, A], q [N, R, S, A], w [N, A]) -> scores [N, R, S, K]
//       scores[r, s, k] = sum_a w[a] tanh(keys[r, k, a] + q[r, s, a])
//   avemo_attention_scores_bwd(keys, q, w, d_scores [N, R, S, K])
//       -> d_keys [N, R, K, A], d_q [N, R, S, A], d_w [N, R, A] (per row r; the caller sums)
//
// R: rows (windows x held face maps), K: positions of a map, S: steps that share a map (the
// frame stride), A: attention features; N: vmapped copies (population members). In XLA the
// same computation is a [R, S, K, A] tanh written out, a one-column matmul (w), and in the
// backward pass three reductions over it and a one-row matmul for d_w that XLA CPU runs on one
// thread. Here each row is one pass: tanh recomputed in the backward pass instead of stored,
// nothing of size [R, S, K, A] in memory. tanh is XLA's (Eigen's) rational approximation, so
// values equal XLA's to float rounding (tests/models/test_attention_native.py).

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"

namespace ffi = xla::ffi;
using namespace avemo_native;  // NOLINT: this file's own helpers

namespace {

inline vf tanh_v(vf x) { return tanh_t(x); }

// One row: scores[s, k] for all s < S, k < K. Vectorised over positions k (16 at a time, keys
// transposed to [A, K] once per row), the sum over a in order.
void scores_row(int64_t K, int64_t S, int64_t A, const float* keys, const float* q,
                const float* w, float* scores) {
  std::vector<float> kt(A * K);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t a = 0; a < A; ++a) kt[a * K + k] = keys[k * A + a];
  for (int64_t s = 0; s < S; ++s) {
    const float* qs = q + s * A;
    int64_t k0 = 0;
    for (; k0 + kW <= K; k0 += kW) {
      vf acc = splat(0.0f);
      for (int64_t a = 0; a < A; ++a) acc += tanh_v(loadv(&kt[a * K + k0]) + qs[a]) * w[a];
      storev(scores + s * K + k0, acc);
    }
    for (int64_t k = k0; k < K; ++k) {  // positions left over (K not a multiple of 16)
      float acc = 0.0f;
      for (int64_t a = 0; a < A; ++a) acc += tanh_r(kt[a * K + k] + qs[a]) * w[a];
      scores[s * K + k] = acc;
    }
  }
}

// One row's gradients: vectorised over the features a (16 at a time), the accumulators of d_q
// and d_w in registers.
void scores_bwd_row(int64_t K, int64_t S, int64_t A, const float* keys, const float* q,
                    const float* w, const float* ds, float* d_keys, float* d_q, float* d_w) {
  std::fill(d_keys, d_keys + K * A, 0.0f);
  std::fill(d_w, d_w + A, 0.0f);
  int64_t a0 = 0;
  for (; a0 + kW <= A; a0 += kW) {
    const vf wv = loadv(w + a0);
    vf dw = splat(0.0f);
    for (int64_t s = 0; s < S; ++s) {
      const vf qv = loadv(q + s * A + a0);
      vf dq = splat(0.0f);
      for (int64_t k = 0; k < K; ++k) {
        const float g = ds[s * K + k];
        const vf t = tanh_v(loadv(keys + k * A + a0) + qv);
        const vf d = (wv * (1.0f - t * t)) * g;
        storev(d_keys + k * A + a0, loadv(d_keys + k * A + a0) + d);
        dq += d;
        dw += t * g;
      }
      storev(d_q + s * A + a0, dq);
    }
    storev(d_w + a0, dw);
  }
  for (int64_t a = a0; a < A; ++a) {  // features left over (A not a multiple of 16)
    float dw = 0.0f;
    for (int64_t s = 0; s < S; ++s) {
      float dq = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        const float g = ds[s * K + k];
        const float t = tanh_r(keys[k * A + a] + q[s * A + a]);
        const float d = (w[a] * (1.0f - t * t)) * g;
        d_keys[k * A + a] += d;
        dq += d;
        dw += t * g;
      }
      d_q[s * A + a] = dq;
    }
    d_w[a] = dw;
  }
}

// [..., R, X, A] -> (N * R, X, A)
bool split(ffi::Span<const int64_t> d, int64_t* rows, int64_t* x, int64_t* a) {
  if (d.size() < 3) return false;
  *rows = 1;
  for (size_t k = 0; k + 2 < d.size(); ++k) *rows *= d[k];
  *x = d[d.size() - 2];
  *a = d[d.size() - 1];
  return true;
}

// Checks the operands; sets rows (N * R), rows per copy (R), K, S, A.
ffi::Error check(const char* name, ffi::Buffer<ffi::F32>& keys, ffi::Buffer<ffi::F32>& q,
                 ffi::Buffer<ffi::F32>& w, int64_t* rows, int64_t* per_copy, int64_t* K,
                 int64_t* S, int64_t* A) {
  int64_t rq, a2;
  if (!split(keys.dimensions(), rows, K, A) || !split(q.dimensions(), &rq, S, &a2) ||
      rq != *rows || a2 != *A)
    return ffi::Error::InvalidArgument(std::string(name) +
                                       ": keys [..., R, K, A] and q [..., R, S, A] do not match");
  const int64_t copies = static_cast<int64_t>(w.element_count()) / std::max<int64_t>(*A, 1);
  if (copies * *A != static_cast<int64_t>(w.element_count()) || copies <= 0 || *rows % copies)
    return ffi::Error::InvalidArgument(std::string(name) + ": w must be [..., A] like keys");
  *per_copy = *rows / copies;
  return ffi::Error::Success();
}

ffi::Error ScoresImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> keys, ffi::Buffer<ffi::F32> q,
                      ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> scores) {
  int64_t rows, per_copy, K, S, A;
  if (auto e = check("avemo_attention_scores", keys, q, w, &rows, &per_copy, &K, &S, &A);
      e.failure())
    return e;
  parallel_for(pool, rows, [&](int64_t r) {
    scores_row(K, S, A, keys.typed_data() + r * K * A, q.typed_data() + r * S * A,
               w.typed_data() + (r / per_copy) * A, scores->typed_data() + r * S * K);
  });
  return ffi::Error::Success();
}

ffi::Error ScoresBwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> keys,
                         ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> w,
                         ffi::Buffer<ffi::F32> ds, ffi::ResultBuffer<ffi::F32> d_keys,
                         ffi::ResultBuffer<ffi::F32> d_q, ffi::ResultBuffer<ffi::F32> d_w) {
  int64_t rows, per_copy, K, S, A;
  if (auto e = check("avemo_attention_scores_bwd", keys, q, w, &rows, &per_copy, &K, &S, &A);
      e.failure())
    return e;
  if (static_cast<int64_t>(ds.element_count()) != rows * S * K)
    return ffi::Error::InvalidArgument("avemo_attention_scores_bwd: d_scores must be [..., R, S, K]");
  parallel_for(pool, rows, [&](int64_t r) {
    scores_bwd_row(K, S, A, keys.typed_data() + r * K * A, q.typed_data() + r * S * A,
                   w.typed_data() + (r / per_copy) * A, ds.typed_data() + r * S * K,
                   d_keys->typed_data() + r * K * A, d_q->typed_data() + r * S * A,
                   d_w->typed_data() + r * A);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AvemoAttentionScores, ScoresImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AvemoAttentionScoresBwd, ScoresBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
