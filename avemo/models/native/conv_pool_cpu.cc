// A stride-1 SAME convolution followed by the 2x2/2 max-pooling, as three XLA FFI handlers for
// the CPU (avemo/models/layers.py, `conv_pool`; the face CNN's blocks, `alexnet.ConvBlock`):
//
//   avemo_conv_pool(x [G, N, H, W, C], kernel [G, k, k, C, F])
//       -> pooled [G, N, H/2, W/2, F], first [G, N, H/2, W/2, F] (int8)
//     pooled[n, i, j, f] = max over (di, dj) in {0, 1}^2 of conv(x, kernel)[n, 2i+di, 2j+dj, f]
//     first: the window position (2 di + dj) of that maximum, the first one on ties (row-major,
//     as `nn.max_pool`'s gradient sends it)
//   avemo_conv_pool_bwd(x, first, d_pooled [G, N, H/2, W/2, F]) -> d_kernel [G, P, k, k, C, F]
//     d_kernel[a, b, c, f] = sum over (n, i, j) of d_pooled[n, i, j, f] x_pad[n, 2i+di+a, 2j+dj+b, c]
//     with (di, dj) the window position in `first`; P fixed chunks of frames (the caller sums
//     them, so the result does not depend on the number of threads)
//   avemo_conv_pool_bwd_x(first, d_pooled, kernel) -> d_x [G, N, H, W, C]
//     d_x_pad[n, 2i+di+a, 2j+dj+b, c] += d_pooled[n, i, j, f] kernel[a, b, c, f] (a call of its
//     own, so that XLA drops it where the input needs no gradient: the image of the first layer)
//
// G: leading copies (vmap, population members); any number of leading dimensions, flattened. k
// odd; H and W even; zero padding of (k - 1) / 2 on each side (SAME). No bias: the caller adds
// it after the pooling (max(y + b) = max(y) + b).
//
// In XLA the same block writes the convolution's full-size output (four times the pooled size),
// reads it back for the maximum and again for the window positions, and in the backward pass
// scatters the gradient to full size, transposes it and the input to [C, H, W, N]-like layouts
// for the weight gradient and runs the input gradient as a convolution over the full-size
// gradient, three quarters of it zeros. For the default's 304 face frames per step (64 x 64 grey,
// 8 -> 16 -> 32 channels) the three blocks took ~125 ms of XLA ops against ~65 ms here
// (docs/performance.md). Here the forward pass computes each pooled position from the input
// patch under its window, vectors over the output channels in registers, and the backward passes
// send each pooled output's gradient only to its window's maximum position (the scatter form,
// vectors over the input channels; one or two input channels: masked sums over the output
// channels), skipping zero gradients (ReLU's inactive half). The sums run in another order than
// XLA's convolutions: values equal to float rounding (tests/models/test_conv_pool_native.py).

#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace ffi = xla::ffi;
using namespace avemo_native;  // NOLINT: this file's own helpers

namespace {

// 8-float vectors (one AVX2 register): the default's channel counts are multiples of 8.
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t i8v __attribute__((vector_size(32)));
constexpr int64_t kV = 8;

inline v8 load8(const float* p) { return load_as<v8>(p); }
inline void store8(float* p, v8 v) { store_as(p, v); }
inline v8 splat8(float x) { return v8{} + x; }

struct Dims {
  int64_t g, n, h, w, c, f, k;  // copies, frames, input size, channels in and out, kernel size
  int64_t ho, wo, hp, wp, nv;  // pooled size, padded input size, vectors of 8 output channels
};

// One frame's input with its zero border and its channels padded to cp >= c: [hp, wp, cp].
void pad_frame(const Dims& d, int64_t cp, const float* x, float* xp) {
  const int64_t p = (d.k - 1) / 2;
  std::fill(xp, xp + d.hp * d.wp * cp, 0.0f);
  for (int64_t y = 0; y < d.h; ++y) {
    float* row = xp + ((y + p) * d.wp + p) * cp;
    const float* in = x + y * d.w * d.c;
    if (cp == d.c) {  // a row at once
      std::memcpy(row, in, d.w * d.c * sizeof(float));
    } else {
      for (int64_t xx = 0; xx < d.w; ++xx)
        std::memcpy(row + xx * cp, in + xx * d.c, d.c * sizeof(float));
    }
  }
}

// The kernel [k, k, c, f] with its output channels padded to nv vectors: [k, k, c, nv * 8].
std::vector<float> padded_kernel(const Dims& d, const float* kernel) {
  std::vector<float> out(d.k * d.k * d.c * d.nv * kV, 0.0f);
  for (int64_t t = 0; t < d.k * d.k * d.c; ++t)
    std::copy(kernel + t * d.f, kernel + (t + 1) * d.f, out.begin() + t * d.nv * kV);
  return out;
}

// Pooled positions (i, j) .. (i, j + NP - 1) of `forward_frame`, output channels v * 8 ..
// v * 8 + 7: their maxima and window positions.
template <int K, int C, int NP, typename Wv>
inline void forward_positions(const Dims& d, const float* __restrict xp, const Wv& wv, int64_t v,
                              int64_t i, int64_t j, float* __restrict pooled,
                              int8_t* __restrict first) {
  // NP horizontally adjacent pooled positions at once: 4 NP independent sums in flight
  const int64_t k = K ? K : d.k, c = C ? C : d.c, wp = d.wp;
  v8 acc[NP][4];
  for (int p = 0; p < NP; ++p)
    for (int q = 0; q < 4; ++q) acc[p][q] = splat8(0.0f);
  const float* base = xp + (2 * i * wp + 2 * j) * c;
  for (int64_t a = 0; a < k; ++a)
    for (int64_t b = 0; b < k; ++b)
      for (int64_t ch = 0; ch < c; ++ch) {
        const v8 w = wv[(a * k + b) * c + ch];
        const float* at = base + (a * wp + b) * c + ch;
        for (int p = 0; p < NP; ++p)
          for (int q = 0; q < 4; ++q) acc[p][q] += at[((q / 2) * wp + 2 * p + q % 2) * c] * w;
      }
  const int64_t lanes = std::min(kV, d.f - v * kV);
  for (int p = 0; p < NP; ++p) {
    v8 best = acc[p][0];
    i8v arg = i8v{} + 0;
    for (int q = 1; q < 4; ++q) {  // a later position wins only if strictly larger: ties keep
      const i8v more = acc[p][q] > best;  // the first
      best = more ? acc[p][q] : best;
      arg = more ? (i8v{} + q) : arg;
    }
    const int64_t out = (i * d.wo + j + p) * d.f + v * kV;
    if (lanes == kV) {
      store8(pooled + out, best);
    } else {
      for (int64_t l = 0; l < lanes; ++l) pooled[out + l] = best[l];
    }
    for (int64_t l = 0; l < lanes; ++l) first[out + l] = static_cast<int8_t>(arg[l]);
  }
}

// One frame's pooled output channels v * 8 .. v * 8 + 7 and their window positions. K, C: the
// kernel size and input channels as compile-time constants (0: read them from d); `wv` the
// kernel's taps for these channels, a local array (in registers when K and C are known) or
// memory.
template <int K, int C, typename Wv>
void forward_frame(const Dims& d, const float* __restrict xp, const Wv& wv, int64_t v,
                   float* __restrict pooled, int8_t* __restrict first) {
  for (int64_t i = 0; i < d.ho; ++i) {
    int64_t j = 0;
    for (; j + 2 <= d.wo; j += 2) forward_positions<K, C, 2>(d, xp, wv, v, i, j, pooled, first);
    if (j < d.wo) forward_positions<K, C, 1>(d, xp, wv, v, i, j, pooled, first);
  }
}

// Adds the kernel gradient of output channels v * 8 .. v * 8 + 7 of one frame to acc[tap] (tap =
// (a k + b) c + ch): `acc` a local array (K and C known: the compiler keeps it in registers) or
// memory.
template <int K, int C, typename Acc>
void backward_frame(const Dims& d, const float* xp, const int8_t* first, const float* g, int64_t v,
                    Acc& acc) {
  const int64_t k = K ? K : d.k, c = C ? C : d.c, wp = d.wp;
  const int64_t lanes = std::min(kV, d.f - v * kV);
  for (int64_t i = 0; i < d.ho; ++i)
    for (int64_t j = 0; j < d.wo; ++j) {
      const int64_t at = (i * d.wo + j) * d.f + v * kV;
      v8 gv = splat8(0.0f);
      i8v pos = i8v{} - 1;
      for (int64_t l = 0; l < lanes; ++l) {
        gv[l] = g[at + l];
        pos[l] = first[at + l];
      }
      for (int q = 0; q < 4; ++q) {
        const v8 gq = (pos == q) ? gv : splat8(0.0f);
        const float* base = xp + ((2 * i + q / 2) * wp + 2 * j + q % 2) * c;
        for (int64_t a = 0; a < k; ++a)
          for (int64_t b = 0; b < k; ++b)
            for (int64_t ch = 0; ch < c; ++ch)
              acc[(a * k + b) * c + ch] += base[(a * wp + b) * c + ch] * gq;
      }
    }
}

// The scatter forms of the backward pass, for inputs of >= kScatterChannels channels: each pooled
// output's gradient g[f] reaches only its window's maximum position (2i + di, 2j + dj), so
//   d_kernel[a, b, :, f] += g[f] x_pad[2i + di + a, 2j + dj + b, :]
//   d_x_pad[2i + di + a, 2j + dj + b, :] += g[f] kernel[a, b, :, f]
// -- vectors over the input channels (padded to cp, a multiple of 8), no work for the three
// positions of a window that get nothing, and none for a zero gradient (ReLU's inactive half).
// (For fewer input channels a vector over them would be mostly padding: the masked form above,
// vectors over the output channels, is used there.)
constexpr int64_t kScatterChannels = 4;

inline int64_t up8(int64_t n) { return (n + kV - 1) / kV * kV; }

// fn(gv, at, f) for each pooled output (i, j, f) of one frame whose gradient gv is not zero, with
// `at` its window's maximum in the padded map, in positions (the walk both scatter forms share).
template <typename F>
inline void for_each_maximum(const Dims& d, const int8_t* __restrict first,
                             const float* __restrict g, F&& fn) {
  for (int64_t i = 0; i < d.ho; ++i)
    for (int64_t j = 0; j < d.wo; ++j) {
      const int64_t at = (i * d.wo + j) * d.f;
      for (int64_t f = 0; f < d.f; ++f) {
        const float gv = g[at + f];
        if (gv == 0.0f) continue;
        const int q = first[at + f];
        fn(gv, (2 * i + q / 2) * d.wp + 2 * j + q % 2, f);
      }
    }
}

// dst[0:nc vectors] += gv * src[0:nc vectors]
inline void axpy8(float* __restrict dst, const float* __restrict src, float gv, int64_t nc) {
  for (int64_t v = 0; v < nc; ++v) store8(dst + v * kV, load8(dst + v * kV) + gv * load8(src + v * kV));
}

// acc [k, k, f, cp] += one frame's kernel gradient (scatter form).
template <int K, int CV>
void backward_frame_scatter(const Dims& d, int64_t cp, const float* __restrict xp,
                            const int8_t* __restrict first, const float* __restrict g,
                            float* __restrict acc) {
  const int64_t k = K ? K : d.k, nc = CV ? CV : cp / kV, wp = d.wp, f_n = d.f;
  for_each_maximum(d, first, g, [&](float gv, int64_t at, int64_t f) {
    const float* base = xp + at * cp;
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b)
        axpy8(acc + ((a * k + b) * f_n + f) * cp, base + (a * wp + b) * cp, gv, nc);
  });
}

// dxp [hp, wp, cp] += one frame's input gradient (scatter form); wt [k, k, f, cp].
template <int K, int CV>
void input_frame_scatter(const Dims& d, int64_t cp, const float* __restrict wt,
                         const int8_t* __restrict first, const float* __restrict g,
                         float* __restrict dxp) {
  const int64_t k = K ? K : d.k, nc = CV ? CV : cp / kV, wp = d.wp, f_n = d.f;
  for_each_maximum(d, first, g, [&](float gv, int64_t at, int64_t f) {
    float* base = dxp + at * cp;
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b)
        axpy8(base + (a * wp + b) * cp, wt + ((a * k + b) * f_n + f) * cp, gv, nc);
  });
}

template <typename F>
void dispatch_cv(const Dims& d, int64_t cp, F&& fn) {  // K = 3 and 1 or 2 channel vectors
  if (d.k == 3 && cp == 8) return fn(std::integral_constant<int, 3>{}, std::integral_constant<int, 1>{});
  if (d.k == 3 && cp == 16) return fn(std::integral_constant<int, 3>{}, std::integral_constant<int, 2>{});
  fn(std::integral_constant<int, 0>{}, std::integral_constant<int, 0>{});
}

bool read_dims(ffi::Span<const int64_t> x, ffi::Span<const int64_t> kernel, Dims* d) {
  if (x.size() < 4 || kernel.size() < 4 || x.size() - 4 != kernel.size() - 4) return false;
  d->g = 1;
  for (size_t i = 0; i + 4 < x.size(); ++i) {
    if (x[i] != kernel[i]) return false;
    d->g *= x[i];
  }
  const size_t r = x.size() - 4;
  d->n = x[r];
  d->h = x[r + 1];
  d->w = x[r + 2];
  d->c = x[r + 3];
  d->k = kernel[r];
  d->f = kernel[r + 3];
  if (kernel[r + 1] != d->k || kernel[r + 2] != d->c || d->k % 2 == 0 || d->h % 2 || d->w % 2)
    return false;
  d->ho = d->h / 2;
  d->wo = d->w / 2;
  d->hp = d->h + d->k - 1;
  d->wp = d->w + d->k - 1;
  d->nv = (d->f + kV - 1) / kV;
  return true;
}

template <typename F>
void dispatch(const Dims& d, F&& fn) {  // fn.template operator()<K, C>() for the common shapes
  if (d.k == 3 && d.c == 1) return fn(std::integral_constant<int, 3>{}, std::integral_constant<int, 1>{});
  if (d.k == 3 && d.c == 3) return fn(std::integral_constant<int, 3>{}, std::integral_constant<int, 3>{});
  if (d.k == 3 && d.c == 8) return fn(std::integral_constant<int, 3>{}, std::integral_constant<int, 8>{});
  if (d.k == 3 && d.c == 16) return fn(std::integral_constant<int, 3>{}, std::integral_constant<int, 16>{});
  fn(std::integral_constant<int, 0>{}, std::integral_constant<int, 0>{});
}

ffi::Error ConvPoolImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                        ffi::ResultBuffer<ffi::F32> pooled, ffi::ResultBuffer<ffi::S8> first) {
  Dims d;
  if (!read_dims(x.dimensions(), kernel.dimensions(), &d))
    return ffi::Error::InvalidArgument(
        "avemo_conv_pool: x must be [..., N, H, W, C] (H, W even) and kernel [..., k, k, C, F] "
        "(k odd) with the same leading dimensions");
  std::vector<std::vector<float>> kernels;
  for (int64_t m = 0; m < d.g; ++m)
    kernels.push_back(padded_kernel(d, kernel.typed_data() + m * d.k * d.k * d.c * d.f));
  const int64_t frame_in = d.h * d.w * d.c, frame_out = d.ho * d.wo * d.f;
  dispatch(d, [&](auto kk, auto cc) {
    parallel_for(pool, d.g * d.n, [&](int64_t item) {
      thread_local std::vector<float> xp;
      xp.resize(d.hp * d.wp * d.c);
      pad_frame(d, d.c, x.typed_data() + item * frame_in, xp.data());
      const std::vector<float>& wk = kernels[item / d.n];
      constexpr int kTaps = decltype(kk)::value * decltype(kk)::value * decltype(cc)::value;
      const int64_t taps = d.k * d.k * d.c;
      for (int64_t v = 0; v < d.nv; ++v) {
        auto run = [&](const auto& wv) {
          forward_frame<decltype(kk)::value, decltype(cc)::value>(
              d, xp.data(), wv, v, pooled->typed_data() + item * frame_out,
              first->typed_data() + item * frame_out);
        };
        if constexpr (kTaps > 0) {
          v8 wv[kTaps];
          for (int t = 0; t < kTaps; ++t) wv[t] = load8(wk.data() + (t * d.nv + v) * kV);
          run(wv);
        } else {
          std::vector<v8> wv(taps);
          for (int64_t t = 0; t < taps; ++t) wv[t] = load8(wk.data() + (t * d.nv + v) * kV);
          run(wv);
        }
      }
    });
  });
  return ffi::Error::Success();
}

ffi::Error ConvPoolBwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> first,
                           ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> d_kernel) {
  // d_kernel [..., P, k, k, C, F]: its shape gives k, F and the number of chunks P.
  const auto dk = d_kernel->dimensions();
  const auto xd = x.dimensions();
  if (dk.size() != xd.size() + 1)
    return ffi::Error::InvalidArgument("avemo_conv_pool_bwd: d_kernel must be [..., P, k, k, C, F]");
  const int64_t chunks = dk[dk.size() - 5];
  std::vector<int64_t> kshape(xd.begin(), xd.end() - 4);
  kshape.insert(kshape.end(), dk.end() - 4, dk.end());
  Dims d;
  if (!read_dims(xd, ffi::Span<const int64_t>(kshape.data(), kshape.size()), &d) || chunks < 1 ||
      static_cast<int64_t>(g.element_count()) != d.g * d.n * d.ho * d.wo * d.f ||
      static_cast<int64_t>(first.element_count()) != d.g * d.n * d.ho * d.wo * d.f)
    return ffi::Error::InvalidArgument(
        "avemo_conv_pool_bwd: x [..., N, H, W, C], first and d_pooled [..., N, H/2, W/2, F] "
        "and d_kernel [..., P, k, k, C, F] do not fit");
  const int64_t frame_in = d.h * d.w * d.c, frame_out = d.ho * d.wo * d.f;
  const int64_t taps = d.k * d.k * d.c;
  if (d.c >= kScatterChannels) {
    const int64_t cp = up8(d.c), kk2 = d.k * d.k;
    dispatch_cv(d, cp, [&](auto kk, auto cv) {
      parallel_for(pool, d.g * chunks, [&](int64_t item) {
        const int64_t m = item / chunks, p = item % chunks;
        const int64_t n0 = p * d.n / chunks, n1 = (p + 1) * d.n / chunks;  // fixed split
        std::vector<float> xp(d.hp * d.wp * cp), acc(kk2 * d.f * cp, 0.0f);
        for (int64_t n = n0; n < n1; ++n) {
          const int64_t frame = m * d.n + n;
          pad_frame(d, cp, x.typed_data() + frame * frame_in, xp.data());
          backward_frame_scatter<decltype(kk)::value, decltype(cv)::value>(
              d, cp, xp.data(), first.typed_data() + frame * frame_out,
              g.typed_data() + frame * frame_out, acc.data());
        }
        float* out = d_kernel->typed_data() + item * taps * d.f;  // [k, k, c, f]
        for (int64_t t = 0; t < kk2; ++t)
          for (int64_t ch = 0; ch < d.c; ++ch)
            for (int64_t f = 0; f < d.f; ++f)
              out[(t * d.c + ch) * d.f + f] = acc[(t * d.f + f) * cp + ch];
      });
    });
    return ffi::Error::Success();
  }
  dispatch(d, [&](auto kk, auto cc) {
    parallel_for(pool, d.g * chunks, [&](int64_t item) {
      const int64_t m = item / chunks, p = item % chunks;
      const int64_t n0 = p * d.n / chunks, n1 = (p + 1) * d.n / chunks;  // fixed split
      constexpr int kTaps = decltype(kk)::value * decltype(kk)::value * decltype(cc)::value;
      std::vector<float> xp(d.hp * d.wp * d.c), acc(taps * d.nv * kV, 0.0f);
      for (int64_t v = 0; v < d.nv; ++v) {
        auto run = [&](auto& a) {
          for (int64_t n = n0; n < n1; ++n) {
            const int64_t frame = m * d.n + n;
            pad_frame(d, d.c, x.typed_data() + frame * frame_in, xp.data());
            backward_frame<decltype(kk)::value, decltype(cc)::value>(
                d, xp.data(), first.typed_data() + frame * frame_out,
                g.typed_data() + frame * frame_out, v, a);
          }
          for (int64_t t = 0; t < taps; ++t) store8(acc.data() + (t * d.nv + v) * kV, a[t]);
        };
        if constexpr (kTaps > 0) {
          v8 a[kTaps];
          for (auto& e : a) e = splat8(0.0f);
          run(a);
        } else {
          std::vector<v8> a(taps, splat8(0.0f));
          run(a);
        }
      }
      float* out = d_kernel->typed_data() + item * taps * d.f;
      for (int64_t t = 0; t < taps; ++t)
        std::copy(acc.begin() + t * d.nv * kV, acc.begin() + t * d.nv * kV + d.f, out + t * d.f);
    });
  });
  return ffi::Error::Success();
}

ffi::Error ConvPoolBwdXImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> first, ffi::Buffer<ffi::F32> g,
                            ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> d_x) {
  Dims d;
  if (!read_dims(d_x->dimensions(), kernel.dimensions(), &d) ||
      static_cast<int64_t>(g.element_count()) != d.g * d.n * d.ho * d.wo * d.f ||
      static_cast<int64_t>(first.element_count()) != d.g * d.n * d.ho * d.wo * d.f)
    return ffi::Error::InvalidArgument(
        "avemo_conv_pool_bwd_x: first and d_pooled [..., N, H/2, W/2, F], kernel "
        "[..., k, k, C, F] and d_x [..., N, H, W, C] do not fit");
  const int64_t cp = up8(d.c), kk2 = d.k * d.k, p = (d.k - 1) / 2;
  const int64_t frame_in = d.h * d.w * d.c, frame_out = d.ho * d.wo * d.f;
  std::vector<std::vector<float>> wts;  // each copy's kernel as [k, k, f, cp]
  for (int64_t m = 0; m < d.g; ++m) {
    const float* w = kernel.typed_data() + m * kk2 * d.c * d.f;
    std::vector<float> wt(kk2 * d.f * cp, 0.0f);
    for (int64_t t = 0; t < kk2; ++t)
      for (int64_t ch = 0; ch < d.c; ++ch)
        for (int64_t f = 0; f < d.f; ++f) wt[(t * d.f + f) * cp + ch] = w[(t * d.c + ch) * d.f + f];
    wts.push_back(std::move(wt));
  }
  dispatch_cv(d, cp, [&](auto kk, auto cv) {
    parallel_for(pool, d.g * d.n, [&](int64_t frame) {
      thread_local std::vector<float> dxp;
      dxp.assign(d.hp * d.wp * cp, 0.0f);
      input_frame_scatter<decltype(kk)::value, decltype(cv)::value>(
          d, cp, wts[frame / d.n].data(), first.typed_data() + frame * frame_out,
          g.typed_data() + frame * frame_out, dxp.data());
      float* out = d_x->typed_data() + frame * frame_in;
      for (int64_t y = 0; y < d.h; ++y)
        for (int64_t xx = 0; xx < d.w; ++xx)
          std::memcpy(out + (y * d.w + xx) * d.c, dxp.data() + ((y + p) * d.wp + xx + p) * cp,
                      d.c * sizeof(float));
    });
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AvemoConvPool, ConvPoolImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S8>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AvemoConvPoolBwd, ConvPoolBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AvemoConvPoolBwdX, ConvPoolBwdXImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
