// The LSTM recurrence of avemo/models/recurrent.py as two XLA FFI handlers for the CPU.
//
// On XLA CPU a step of a [8, 64] LSTM is a few microseconds of arithmetic spread over ~8 tiny
// kernels (the recurrent matmul, the gate activations, the stores of the step's outputs, the loop
// counter), each with ~2 us of dispatch: the loop, not the arithmetic, is the cost. Here the whole
// loop over time is one call; everything that is not recurrent (the input projection, dW_h) stays
// in XLA (recurrent.py).
//
//   avemo_lstm_fwd(xw [N, B, L, 4H], w_h [N, H, 4H], b [N, 4H]) -> hs [N, B, L, H],
//                                                 gates [N, B, L, 4H], cells [N, B, L, H]
//     (xw = x W_i without the bias b, which the kernel adds to each step)
//   avemo_lstm_bwd(d_hs [N, B, L, H], gates, cells, w_h) -> dz [N, B, L, 4H]
//
// Batch-major ([B, L, ...], as the model holds sequences), so no transposes surround the calls.
//
// N: leading batch of independent LSTMs (vmap, population training); any number of leading
// dimensions, flattened. The batch rows are independent recurrences: chunks of them run on XLA's
// intra-op thread pool (`parallel_for`), with no synchronisation inside the loop over time. Gate order i, f, g, o; zero initial state. The math is recurrent.py's
// `_forward` and `_lstm_scan_bwd`, float32 throughout; tanh is XLA's (Eigen's) rational
// approximation and sigmoid(x) = 0.5 + 0.5 tanh(x / 2), as XLA CPU expands them, so the results
// equal the scan's to float rounding (tests/models/test_recurrent.py).

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"

namespace ffi = xla::ffi;
using namespace avemo_native;  // NOLINT: this file's own helpers

namespace {

inline float sigmoid_r(float x) { return 0.5f + 0.5f * tanh_r(0.5f * x); }

// Rows of a strided matrix: row r at p + r * ld.
struct Rows {
  const float* p;
  int64_t ld;
};

// out[r, :] = init[r, :] + sum_k a[r, k] m[k, :] for r < RB, columns n0 .. n0 + 32, with the
// 2 x RB accumulators in registers over k. a [RB, K] (row stride K), m [K, N].
template <int RB>
inline void tile(int64_t K, int64_t N, const float* a, const float* m, Rows init,
                 const float* bias, float* out, int64_t ld_out, int64_t n0) {
  vf acc0[RB], acc1[RB];
  for (int r = 0; r < RB; ++r) {
    acc0[r] = loadv(init.p + r * init.ld + n0);
    acc1[r] = loadv(init.p + r * init.ld + n0 + kW);
    if (bias) {
      acc0[r] += loadv(bias + n0);
      acc1[r] += loadv(bias + n0 + kW);
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    const vf m0 = loadv(m + k * N + n0), m1 = loadv(m + k * N + n0 + kW);
    for (int r = 0; r < RB; ++r) {
      const float s = a[r * K + k];
      acc0[r] += s * m0;
      acc1[r] += s * m1;
    }
  }
  for (int r = 0; r < RB; ++r) {
    storev(out + r * ld_out + n0, acc0[r]);
    storev(out + r * ld_out + n0 + kW, acc1[r]);
  }
}

template <int RB>
inline void rows_block(int64_t K, int64_t N, const float* a, const float* m, Rows init,
                       const float* bias, float* out, int64_t ld_out) {
  int64_t n0 = 0;
  for (; n0 + 2 * kW <= N; n0 += 2 * kW) tile<RB>(K, N, a, m, init, bias, out, ld_out, n0);
  for (int r = 0; r < RB; ++r) {  // remaining columns (N not a multiple of 32)
    for (int64_t n = n0; n < N; ++n) {
      float acc = init.p[r * init.ld + n] + (bias ? bias[n] : 0.0f);
      for (int64_t k = 0; k < K; ++k) acc += a[r * K + k] * m[k * N + n];
      out[r * ld_out + n] = acc;
    }
  }
}

// out[r, :] = init[r, :] (+ bias) + a[r, :] @ m for r < rows; a [rows, K] contiguous, m [K, N]
// contiguous, init and out strided rows, bias [N] or null.
inline void matmul_acc(int64_t rows, int64_t K, int64_t N, const float* a, const float* m,
                       Rows init, const float* bias, float* out, int64_t ld_out) {
  int64_t r = 0;
  auto at = [&](int64_t r0) { return Rows{init.p + r0 * init.ld, init.ld}; };
  for (; r + 8 <= rows; r += 8)
    rows_block<8>(K, N, a + r * K, m, at(r), bias, out + r * ld_out, ld_out);
  for (; r + 4 <= rows; r += 4)
    rows_block<4>(K, N, a + r * K, m, at(r), bias, out + r * ld_out, ld_out);
  for (; r < rows; ++r) rows_block<1>(K, N, a + r * K, m, at(r), bias, out + r * ld_out, ld_out);
}

// Batch-major, as the model holds its sequences: row b of step t of a [B, L, X] array is at
// (b * L + t) * X, so no transposes are needed around the calls.
void forward(int64_t L, int64_t B, int64_t H, const float* xw, const float* w,
             const float* bias, float* hs, float* gates, float* cells) {
  const int64_t G = 4 * H;
  std::vector<float> h(B * H, 0.0f), c(B * H, 0.0f);
  for (int64_t t = 0; t < L; ++t) {
    // z_t = (x_t W_i + b) + h_{t-1} W_h, into gates[:, t]
    matmul_acc(B, H, G, h.data(), w, Rows{xw + t * G, L * G}, bias, gates + t * G, L * G);
    for (int64_t b = 0; b < B; ++b) {
      float* ab = gates + (b * L + t) * G;
      for (int64_t j = 0; j < 2 * H; ++j) ab[j] = sigmoid_r(ab[j]);       // i, f
      for (int64_t j = 2 * H; j < 3 * H; ++j) ab[j] = tanh_r(ab[j]);      // g
      for (int64_t j = 3 * H; j < G; ++j) ab[j] = sigmoid_r(ab[j]);       // o
      float* cb = c.data() + b * H;
      float* hb = h.data() + b * H;
      for (int64_t j = 0; j < H; ++j) {
        const float cn = ab[H + j] * cb[j] + ab[j] * ab[2 * H + j];
        cb[j] = cn;
        hb[j] = ab[3 * H + j] * tanh_r(cn);
      }
      std::memcpy(cells + (b * L + t) * H, cb, sizeof(float) * H);
      std::memcpy(hs + (b * L + t) * H, hb, sizeof(float) * H);
    }
  }
}

void backward(int64_t L, int64_t B, int64_t H, const float* d_hs, const float* gates,
              const float* cells, const float* w, float* dz) {
  const int64_t G = 4 * H;
  std::vector<float> wt(G * H);  // W_h^T [4H, H]
  for (int64_t j = 0; j < H; ++j)
    for (int64_t k = 0; k < G; ++k) wt[k * H + j] = w[j * G + k];
  std::vector<float> dh(B * H), dc(B * H, 0.0f), dz_next(B * G, 0.0f), tc(H);
  for (int64_t t = L - 1; t >= 0; --t) {
    // dh_t = dL/dh_t + dz_{t+1} W_h^T
    matmul_acc(B, G, H, dz_next.data(), wt.data(), Rows{d_hs + t * H, L * H}, nullptr, dh.data(),
               H);
    for (int64_t b = 0; b < B; ++b) {
      const float* ab = gates + (b * L + t) * G;
      const float* cb = cells + (b * L + t) * H;
      float* dzb = dz + (b * L + t) * G;
      float* dcb = dc.data() + b * H;
      const float* dhb = dh.data() + b * H;
      for (int64_t j = 0; j < H; ++j) tc[j] = tanh_r(cb[j]);
      if (t + 1 < L) {  // dc_t = dc_{t+1} f_{t+1} + ...
        const float* fn = gates + (b * L + t + 1) * G + H;
        for (int64_t j = 0; j < H; ++j) dcb[j] *= fn[j];
      }
      if (t > 0) {
        const float* cp = cells + (b * L + t - 1) * H;  // c_{t-1}
        for (int64_t j = 0; j < H; ++j) {
          const float f = ab[H + j];
          const float d = dcb[j] + dhb[j] * (ab[3 * H + j] * (1.0f - tc[j] * tc[j]));
          dcb[j] = d;
          dzb[H + j] = d * (cp[j] * (f * (1.0f - f)));
        }
      } else {
        for (int64_t j = 0; j < H; ++j) {
          dcb[j] = dcb[j] + dhb[j] * (ab[3 * H + j] * (1.0f - tc[j] * tc[j]));
          dzb[H + j] = 0.0f;  // c_{-1} = 0
        }
      }
      for (int64_t j = 0; j < H; ++j) {
        const float i = ab[j], g = ab[2 * H + j], o = ab[3 * H + j], d = dcb[j];
        dzb[j] = d * (g * (i * (1.0f - i)));
        dzb[2 * H + j] = d * (i * (1.0f - g * g));
        dzb[3 * H + j] = dhb[j] * (tc[j] * (o * (1.0f - o)));
      }
      std::memcpy(dz_next.data() + b * G, dzb, sizeof(float) * G);
    }
  }
}

// [..., B, L, X] -> (N, B, L, X); false unless rank >= 3.
bool split_dims(ffi::Span<const int64_t> d, int64_t* n, int64_t* b, int64_t* l, int64_t* x) {
  if (d.size() < 3) return false;
  *n = 1;
  for (size_t k = 0; k + 3 < d.size(); ++k) *n *= d[k];
  *b = d[d.size() - 3];
  *l = d[d.size() - 2];
  *x = d[d.size() - 1];
  return true;
}

// Work items of a call: (LSTM k of the N, a chunk of its batch rows). Rows are independent
// recurrences, and the arrays are batch-major, so a chunk is a smaller batch at an offset.
struct Chunks {
  int64_t rows, per_member;
  Chunks(int64_t b, int64_t threads) {
    rows = std::max<int64_t>(4, (b + threads) / (threads + 1));  // >= 4 rows: matmul blocks
    rows = std::min(rows, b);
    per_member = b > 0 ? (b + rows - 1) / rows : 0;
  }
};

ffi::Error LstmFwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xw, ffi::Buffer<ffi::F32> w_h,
                       ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> hs,
                       ffi::ResultBuffer<ffi::F32> gates, ffi::ResultBuffer<ffi::F32> cells) {
  int64_t n, l, b, g;
  if (!split_dims(xw.dimensions(), &n, &b, &l, &g) || g % 4 != 0)
    return ffi::Error::InvalidArgument("avemo_lstm_fwd: xw must be [..., B, L, 4H]");
  const int64_t h = g / 4;
  if (static_cast<int64_t>(w_h.element_count()) != n * h * g)
    return ffi::Error::InvalidArgument("avemo_lstm_fwd: w_h must be [..., H, 4H] like xw");
  if (static_cast<int64_t>(bias.element_count()) != n * g)
    return ffi::Error::InvalidArgument("avemo_lstm_fwd: bias must be [..., 4H] like xw");
  const Chunks ch(b, pool.num_threads());
  parallel_for(pool, n * ch.per_member, [&](int64_t item) {
    const int64_t k = item / ch.per_member, r0 = (item % ch.per_member) * ch.rows;
    const int64_t rows = std::min(ch.rows, b - r0), row = k * b + r0;
    forward(l, rows, h, xw.typed_data() + row * l * g, w_h.typed_data() + k * h * g,
            bias.typed_data() + k * g, hs->typed_data() + row * l * h,
            gates->typed_data() + row * l * g, cells->typed_data() + row * l * h);
  });
  return ffi::Error::Success();
}

ffi::Error LstmBwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> d_hs,
                       ffi::Buffer<ffi::F32> gates, ffi::Buffer<ffi::F32> cells,
                       ffi::Buffer<ffi::F32> w_h, ffi::ResultBuffer<ffi::F32> dz) {
  int64_t n, l, b, g;
  if (!split_dims(gates.dimensions(), &n, &b, &l, &g) || g % 4 != 0)
    return ffi::Error::InvalidArgument("avemo_lstm_bwd: gates must be [..., B, L, 4H]");
  const int64_t h = g / 4;
  if (static_cast<int64_t>(w_h.element_count()) != n * h * g ||
      static_cast<int64_t>(d_hs.element_count()) != n * l * b * h ||
      static_cast<int64_t>(cells.element_count()) != n * l * b * h)
    return ffi::Error::InvalidArgument("avemo_lstm_bwd: shapes do not match gates [..., B, L, 4H]");
  const Chunks ch(b, pool.num_threads());
  parallel_for(pool, n * ch.per_member, [&](int64_t item) {
    const int64_t k = item / ch.per_member, r0 = (item % ch.per_member) * ch.rows;
    const int64_t rows = std::min(ch.rows, b - r0), row = k * b + r0;
    backward(l, rows, h, d_hs.typed_data() + row * l * h, gates.typed_data() + row * l * g,
             cells.typed_data() + row * l * h, w_h.typed_data() + k * h * g,
             dz->typed_data() + row * l * g);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AvemoLstmFwd, LstmFwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AvemoLstmBwd, LstmBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
