// The attention of Eq. (28)-(29) as two XLA FFI handlers for the CPU (avemo/models/attention.py,
// `SpatialAttention`, `attention_pool`):
//
//   avemo_attention_pool(fmap [N, R, K, C], q [N, R, S, A], W [N, C, A], w [N, A])
//       -> pooled [N, R, S, C], weights [N, R, S, K]
//     keys[r, k]       = fmap[r, k] W                                  (W F_i of Eq. 28)
//     scores[r, s, k]  = sum_a w[a] tanh(keys[r, k, a] + q[r, s, a])    (q = W_g h_t + W's bias)
//     weights[r, s]    = softmax_k scores[r, s]                         (a_t of Eq. 28)
//     pooled[r, s]     = sum_k weights[r, s, k] fmap[r, k]              (Eq. 29, before W_v)
//   avemo_attention_pool_bwd(fmap, q, W, w, weights, d_pooled, d_weights)
//       -> d_fmap [N, R, K, C] (or [0]: not wanted), d_q [N, R, S, A],
//          d_W [N, P, C, A], d_w [N, P, A] (P fixed chunks of rows per copy; the caller sums)
//
// R: rows (windows x held face maps), K: positions of a map, C: its channels, S: steps that
// share a map (the frame stride), A: attention features; N: vmapped copies (population
// members). d_weights may be [0] (no cotangent on the weights). In XLA the same computation is
// a [R, S, K, A] tanh written out, a one-column matmul, a softmax, two batched matmuls of a few
// KFLOP each per row (which XLA CPU runs at a few GFLOP/s), the keys' projection and, in the
// backward pass, its weight gradient as a transposed matmul over all R K positions. Here each
// row is one pass in L1: the keys are recomputed in the backward pass instead of stored, tanh
// too, nothing of size [R, S, K, A] exists, and W's gradient is accumulated per chunk of rows
// (a fixed split, so the sum does not depend on the thread count). tanh is XLA's (Eigen's)
// rational approximation and exp a Cephes polynomial, so values equal XLA's to float rounding
// (tests/models/test_attention_native.py).

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common.h"

namespace ffi = xla::ffi;
using namespace avemo_native;  // NOLINT: this file's own helpers

namespace {

typedef int32_t vi __attribute__((vector_size(64)));

// e^x lane by lane for x <= 88 (Cephes expf: x = n ln 2 + r, |r| <= ln 2 / 2, a degree-6
// polynomial in r, 2^n from the exponent bits); relative error ~1e-7, e^x = 0 below -87.
inline vf exp_v(vf x) {
  x = x < -87.0f ? splat(-87.0f) : x;
  const vf t = x * 1.44269504088896341f + 0.5f;
  vf n = __builtin_convertvector(__builtin_convertvector(t, vi), vf);  // floor(t), t > -126
  n = n > t ? n - 1.0f : n;
  const vf r = x - n * 0.693359375f - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const vf y = p * r * r + r + 1.0f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(vf));
  return y * scale;
}

inline int64_t up16(int64_t n) { return (n + kW - 1) / kW * kW; }

// out[m, :] (+)= sum_j a(m, j) b[j, :] for m < M, j < J: b and out row-major with `nv` vectors
// of 16 floats per row, a(m, j) = a[m * ars + j * acs]. 4 rows x 2 vectors of `out` stay in
// registers over the whole sum.
void mm(int64_t M, int64_t J, int64_t nv, const float* a, int64_t ars, int64_t acs,
        const float* b, float* out, bool accumulate) {
  const int64_t ld = nv * kW;
  for (int64_t m = 0; m < M; m += 4) {
    const int64_t mr = std::min<int64_t>(4, M - m);
    for (int64_t v = 0; v < nv; v += 2) {
      const bool two = v + 1 < nv;
      vf acc[4][2];
      for (int i = 0; i < 4; ++i)
        for (int h = 0; h < 2; ++h)
          acc[i][h] = accumulate && i < mr && (h == 0 || two)
                          ? loadv(out + (m + i) * ld + (v + h) * kW)
                          : splat(0.0f);
      for (int64_t j = 0; j < J; ++j) {
        const vf b0 = loadv(b + j * ld + v * kW);
        const vf b1 = two ? loadv(b + j * ld + (v + 1) * kW) : splat(0.0f);
        for (int i = 0; i < 4; ++i) {
          if (i >= mr) break;
          const float x = a[(m + i) * ars + j * acs];
          acc[i][0] += x * b0;
          acc[i][1] += x * b1;
        }
      }
      for (int i = 0; i < mr; ++i) {
        storev(out + (m + i) * ld + v * kW, acc[i][0]);
        if (two) storev(out + (m + i) * ld + (v + 1) * kW, acc[i][1]);
      }
    }
  }
}

struct Dims {
  int64_t rows, per_copy, K, C, S, A;  // rows: N * R; per_copy: R
  int64_t Kp, Cp, Ap;                   // rounded up to 16
};

// One copy's parameters, zero-padded: W [C, Ap], W^T [A, Cp], w [Ap].
struct Params {
  std::vector<float> W, Wt, w;
  Params(const Dims& d, const float* W_in, const float* w_in)
      : W(d.C * d.Ap, 0.0f), Wt(d.A * d.Cp, 0.0f), w(d.Ap, 0.0f) {
    for (int64_t c = 0; c < d.C; ++c)
      for (int64_t a = 0; a < d.A; ++a) {
        W[c * d.Ap + a] = W_in[c * d.A + a];
        Wt[a * d.Cp + c] = W_in[c * d.A + a];
      }
    std::copy(w_in, w_in + d.A, w.begin());
  }
};

// Params of each copy (W [N, C, A], w [N, A]).
std::vector<std::unique_ptr<Params>> copy_params(const Dims& d, ffi::Buffer<ffi::F32>& W,
                                                 ffi::Buffer<ffi::F32>& w) {
  std::vector<std::unique_ptr<Params>> params;
  for (int64_t n = 0; n < d.rows / d.per_copy; ++n)
    params.push_back(std::make_unique<Params>(d, W.typed_data() + n * d.C * d.A,
                                              w.typed_data() + n * d.A));
  return params;
}

// dst[j, i] = src[i, j] for i < rows, j < cols (leading dimensions lds, ldd): 16 x 16 blocks in
// registers, four rounds of two-source lane shuffles; scalar at the edges.
void transpose(const float* src, int64_t rows, int64_t cols, int64_t lds, float* dst, int64_t ldd) {
  int64_t i0 = 0, j0 = 0;
#if defined(__GNUC__) && !defined(__clang__)
  for (; i0 + kW <= rows; i0 += kW) {
    for (j0 = 0; j0 + kW <= cols; j0 += kW) {
      vf r[kW];
      for (int i = 0; i < kW; ++i) r[i] = loadv(src + (i0 + i) * lds + j0);
      // round with block b: rows i and i + b exchange their halves of each 2b-lane chunk
      auto round = [&r](int b, vi lo, vi hi) {
        for (int i = 0; i < kW; ++i)
          if ((i & b) == 0) {
            const vf a = r[i], c = r[i + b];
            r[i] = __builtin_shuffle(a, c, lo);
            r[i + b] = __builtin_shuffle(a, c, hi);
          }
      };
      round(8, vi{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
            vi{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31});
      round(4, vi{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
            vi{4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31});
      round(2, vi{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
            vi{2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31});
      round(1, vi{0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
            vi{1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31});
      for (int j = 0; j < kW; ++j) storev(dst + (j0 + j) * ldd + i0, r[j]);
    }
    for (int64_t i = i0; i < i0 + kW; ++i)  // columns left over
      for (int64_t j = j0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
  }
#endif
  for (int64_t i = i0; i < rows; ++i)  // rows left over
    for (int64_t j = 0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
}

// A row's feature map: F [K, Cp] (the input itself when C is a multiple of 16, else a
// zero-padded copy) and F^T [C, Kp], zero-padded.
struct Map {
  std::vector<float> padded, Ft;
  const float* F = nullptr;
  explicit Map(const Dims& d) : padded(d.C == d.Cp ? 0 : d.K * d.Cp, 0.0f), Ft(d.C * d.Kp, 0.0f) {}
  void load(const Dims& d, const float* f) {
    if (d.C == d.Cp) {
      F = f;
    } else {
      for (int64_t k = 0; k < d.K; ++k) std::memcpy(&padded[k * d.Cp], f + k * d.C, d.C * 4);
      F = padded.data();
    }
    transpose(f, d.K, d.C, d.C, Ft.data(), d.Kp);
  }
};

// Eq. (28)-(29) for one row: weights [S, K] and pooled [S, C] (scratch: kt [A, Kp], e [S, Kp],
// pooled_p [S, Cp]).
void pool_row(const Dims& d, const Params& p, const Map& m, const float* q, float* kt, float* e,
              float* pooled_p, float* weights, float* pooled) {
  const int64_t K = d.K, Kp = d.Kp, A = d.A;
  mm(A, d.C, Kp / kW, p.W.data(), 1, d.Ap, m.Ft.data(), kt, false);  // keys^T = W^T F^T
  for (int64_t s = 0; s < d.S; ++s) {
    const float* qs = q + s * A;
    float* es = e + s * Kp;
    for (int64_t k0 = 0; k0 < Kp; k0 += kW) {
      vf acc = splat(0.0f);
      for (int64_t a = 0; a < A; ++a) acc += tanh_t(loadv(kt + a * Kp + k0) + qs[a]) * p.w[a];
      storev(es + k0, acc);
    }
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t k = 0; k < K; ++k) mx = std::max(mx, es[k]);
    vf sum = splat(0.0f);
    for (int64_t k0 = 0; k0 < Kp; k0 += kW) {
      vf x = exp_v(loadv(es + k0) - mx);
      for (int64_t k = std::max(k0, K); k < k0 + kW; ++k) x[k - k0] = 0.0f;  // padding
      storev(es + k0, x);
      sum += x;
    }
    float total = 0.0f;
    for (int64_t i = 0; i < kW; ++i) total += sum[i];
    const float inv = 1.0f / total;
    for (int64_t k0 = 0; k0 < Kp; k0 += kW) storev(es + k0, loadv(es + k0) * inv);
    std::memcpy(weights + s * K, es, K * sizeof(float));
  }
  mm(d.S, K, d.Cp / kW, e, Kp, 1, m.F, pooled_p, false);  // pooled = weights F
  for (int64_t s = 0; s < d.S; ++s)
    std::memcpy(pooled + s * d.C, pooled_p + s * d.Cp, d.C * sizeof(float));
}

// Scratch of one chunk of rows in the backward pass.
struct BwdScratch {
  std::vector<float> keys, qp, alpha, dalpha, dpool, dkeys, dfmap;
  explicit BwdScratch(const Dims& d)
      : keys(d.K * d.Ap), qp(d.S * d.Ap, 0.0f), alpha(d.S * d.Kp, 0.0f), dalpha(d.S * d.Kp),
        dpool(d.S * d.Cp, 0.0f), dkeys(d.K * d.Ap), dfmap(d.K * d.Cp) {}
};

// One row's gradients; d_W (C x Ap) and d_w (Ap) accumulate over the chunk's rows.
void pool_bwd_row(const Dims& d, const Params& p, const Map& m, BwdScratch& t, const float* q,
                  const float* weights, const float* d_pooled, const float* d_weights,
                  float* d_fmap, float* d_q, float* dW, float* dw) {
  const int64_t K = d.K, Kp = d.Kp, A = d.A, Ap = d.Ap, C = d.C, Cp = d.Cp, S = d.S;
  mm(K, C, Ap / kW, m.F, Cp, 1, p.W.data(), t.keys.data(), false);  // keys = F W
  for (int64_t s = 0; s < S; ++s) {
    std::memcpy(&t.qp[s * Ap], q + s * A, A * sizeof(float));
    std::memcpy(&t.alpha[s * Kp], weights + s * K, K * sizeof(float));
    std::memcpy(&t.dpool[s * Cp], d_pooled + s * C, C * sizeof(float));
  }
  mm(S, C, Kp / kW, t.dpool.data(), Cp, 1, m.Ft.data(), t.dalpha.data(), false);  // dP F^T
  for (int64_t s = 0; s < S; ++s) {  // through the softmax: ds = a (da - <a, da>)
    float* da = &t.dalpha[s * Kp];
    const float* al = &t.alpha[s * Kp];
    if (d_weights != nullptr)
      for (int64_t k = 0; k < K; ++k) da[k] += d_weights[s * K + k];
    float dot = 0.0f;
    for (int64_t k = 0; k < K; ++k) dot += al[k] * da[k];
    for (int64_t k = 0; k < K; ++k) da[k] = al[k] * (da[k] - dot);
  }
  // through tanh: vectorised over the features a, 16 at a time
  std::fill(t.dkeys.begin(), t.dkeys.end(), 0.0f);
  for (int64_t a0 = 0; a0 < Ap; a0 += kW) {
    const vf wv = loadv(&p.w[a0]);
    vf dwv = splat(0.0f);
    for (int64_t s = 0; s < S; ++s) {
      const vf qv = loadv(&t.qp[s * Ap + a0]);
      const float* ds = &t.dalpha[s * Kp];
      vf dq = splat(0.0f);
      for (int64_t k = 0; k < K; ++k) {
        const float g = ds[k];
        const vf th = tanh_t(loadv(&t.keys[k * Ap + a0]) + qv);
        const vf dk = (wv * (1.0f - th * th)) * g;
        storev(&t.dkeys[k * Ap + a0], loadv(&t.dkeys[k * Ap + a0]) + dk);
        dq += dk;
        dwv += th * g;
      }
      for (int64_t a = a0; a < std::min(a0 + kW, A); ++a) d_q[s * A + a] = dq[a - a0];
    }
    storev(dw + a0, loadv(dw + a0) + dwv);
  }
  mm(C, K, Ap / kW, m.F, 1, Cp, t.dkeys.data(), dW, true);  // d_W += F^T d_keys
  if (d_fmap != nullptr) {  // d_F = weights^T d_pooled + d_keys W^T
    mm(K, S, Cp / kW, t.alpha.data(), 1, Kp, t.dpool.data(), t.dfmap.data(), false);
    mm(K, A, Cp / kW, t.dkeys.data(), Ap, 1, p.Wt.data(), t.dfmap.data(), true);
    for (int64_t k = 0; k < K; ++k)
      std::memcpy(d_fmap + k * C, &t.dfmap[k * Cp], C * sizeof(float));
  }
}

// [..., R, X, Y] -> (N * R, X, Y)
bool split(ffi::Span<const int64_t> dims, int64_t* rows, int64_t* x, int64_t* y) {
  if (dims.size() < 3) return false;
  *rows = 1;
  for (size_t k = 0; k + 2 < dims.size(); ++k) *rows *= dims[k];
  *x = dims[dims.size() - 2];
  *y = dims[dims.size() - 1];
  return true;
}

ffi::Error check(const char* name, ffi::Buffer<ffi::F32>& fmap, ffi::Buffer<ffi::F32>& q,
                 ffi::Buffer<ffi::F32>& W, ffi::Buffer<ffi::F32>& w, Dims* d) {
  int64_t rq;
  auto fail = [&](const char* what) {
    return ffi::Error::InvalidArgument(std::string(name) + ": " + what);
  };
  if (!split(fmap.dimensions(), &d->rows, &d->K, &d->C) || !split(q.dimensions(), &rq, &d->S, &d->A) ||
      rq != d->rows)
    return fail("fmap [..., R, K, C] and q [..., R, S, A] do not match");
  if (d->K <= 0 || d->C <= 0 || d->S <= 0 || d->A <= 0) return fail("empty dimension");
  const int64_t copies = static_cast<int64_t>(W.element_count()) / (d->C * d->A);
  if (copies <= 0 || copies * d->C * d->A != static_cast<int64_t>(W.element_count()) ||
      static_cast<int64_t>(w.element_count()) != copies * d->A || d->rows % copies)
    return fail("W must be [..., C, A] and w [..., A], one per copy of the rows");
  d->per_copy = d->rows / copies;
  d->Kp = up16(d->K);
  d->Cp = up16(d->C);
  d->Ap = up16(d->A);
  return ffi::Error::Success();
}

ffi::Error PoolImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> fmap, ffi::Buffer<ffi::F32> q,
                    ffi::Buffer<ffi::F32> W, ffi::Buffer<ffi::F32> w,
                    ffi::ResultBuffer<ffi::F32> pooled, ffi::ResultBuffer<ffi::F32> weights) {
  Dims d;
  if (auto e = check("avemo_attention_pool", fmap, q, W, w, &d); e.failure()) return e;
  const auto params = copy_params(d, W, w);
  const int64_t chunk = 8;  // rows per work item
  parallel_for(pool, (d.rows + chunk - 1) / chunk, [&](int64_t i) {
    Map m(d);
    std::vector<float> kt(d.A * d.Kp), e(d.S * d.Kp), pp(d.S * d.Cp);
    for (int64_t r = i * chunk; r < std::min(d.rows, (i + 1) * chunk); ++r) {
      m.load(d, fmap.typed_data() + r * d.K * d.C);
      pool_row(d, *params[r / d.per_copy], m, q.typed_data() + r * d.S * d.A, kt.data(),
               e.data(), pp.data(), weights->typed_data() + r * d.S * d.K,
               pooled->typed_data() + r * d.S * d.C);
    }
  });
  return ffi::Error::Success();
}

ffi::Error PoolBwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> fmap, ffi::Buffer<ffi::F32> q,
                       ffi::Buffer<ffi::F32> W, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::F32> d_pooled,
                       ffi::Buffer<ffi::F32> d_weights, ffi::ResultBuffer<ffi::F32> d_fmap,
                       ffi::ResultBuffer<ffi::F32> d_q, ffi::ResultBuffer<ffi::F32> d_W,
                       ffi::ResultBuffer<ffi::F32> d_w) {
  Dims d;
  const char* name = "avemo_attention_pool_bwd";
  if (auto e = check(name, fmap, q, W, w, &d); e.failure()) return e;
  const int64_t copies = d.rows / d.per_copy;
  const int64_t n_sk = d.rows * d.S * d.K;
  const bool want_dfmap = d_fmap->element_count() != 0;
  const bool have_dweights = d_weights.element_count() != 0;
  if (static_cast<int64_t>(weights.element_count()) != n_sk ||
      static_cast<int64_t>(d_pooled.element_count()) != d.rows * d.S * d.C ||
      (have_dweights && static_cast<int64_t>(d_weights.element_count()) != n_sk) ||
      (want_dfmap && d_fmap->element_count() != fmap.element_count()))
    return ffi::Error::InvalidArgument(std::string(name) + ": cotangent shapes do not match");
  const int64_t P = static_cast<int64_t>(d_w->element_count()) / (copies * d.A);
  if (P <= 0 || P > d.per_copy || P * copies * d.A != static_cast<int64_t>(d_w->element_count()) ||
      static_cast<int64_t>(d_W->element_count()) != P * copies * d.C * d.A)
    return ffi::Error::InvalidArgument(std::string(name) + ": d_W [..., P, C, A], d_w [..., P, A]");
  const auto params = copy_params(d, W, w);
  parallel_for(pool, copies * P, [&](int64_t item) {  // chunk p of copy n: a fixed row range
    const int64_t n = item / P, p = item % P;
    const int64_t begin = n * d.per_copy + p * d.per_copy / P;
    const int64_t end = n * d.per_copy + (p + 1) * d.per_copy / P;
    Map m(d);
    BwdScratch t(d);
    std::vector<float> dW(d.C * d.Ap, 0.0f), dw(d.Ap, 0.0f);
    for (int64_t r = begin; r < end; ++r) {
      m.load(d, fmap.typed_data() + r * d.K * d.C);
      pool_bwd_row(d, *params[n], m, t, q.typed_data() + r * d.S * d.A,
                   weights.typed_data() + r * d.S * d.K, d_pooled.typed_data() + r * d.S * d.C,
                   have_dweights ? d_weights.typed_data() + r * d.S * d.K : nullptr,
                   want_dfmap ? d_fmap->typed_data() + r * d.K * d.C : nullptr,
                   d_q->typed_data() + r * d.S * d.A, dW.data(), dw.data());
    }
    for (int64_t c = 0; c < d.C; ++c)
      std::memcpy(d_W->typed_data() + (item * d.C + c) * d.A, &dW[c * d.Ap], d.A * sizeof(float));
    std::memcpy(d_w->typed_data() + item * d.A, dw.data(), d.A * sizeof(float));
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AvemoAttentionPool, PoolImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AvemoAttentionPoolBwd, PoolBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
