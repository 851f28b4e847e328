// JAX's threefry random bits as one XLA FFI call on the CPU (avemo/models/dropout.py).
//
//   avemo_threefry_bits(key u32[..., 2]) -> bits u32[..., *shape]
//
// bits equal `jax.random.bits(key, shape, jnp.uint32)` for a threefry2x32 key with
// `jax_threefry_partitionable` (JAX's default): element i (flat index, as a 64-bit counter
// split into hi, lo) is b1 ^ b2 with (b1, b2) = threefry2x32(key, (hi, lo)), 20 rounds
// (Salmon et al., SC 2011; the rounds as JAX's `_threefry2x32_lowering` writes them). XLA CPU
// lowers JAX's threefry as a 5-iteration while loop whose thunks and counter arrays cost a
// dropout layer of the default model ~1 ms a step; here it is one vectorised pass.
// Leading dimensions of key: independent keys (vmap, population members), each with its own
// counters 0 .. prod(shape) - 1.

#include <cstdint>

#include "common.h"

namespace ffi = xla::ffi;
using namespace avemo_native;  // NOLINT: this file's own helpers

namespace {

inline uint32_t rotl(uint32_t v, uint32_t r) { return (v << r) | (v >> (32 - r)); }

// The rotations of threefry2x32's rounds: groups of four, alternating.
constexpr uint32_t kRotations[2][4] = {{13, 15, 26, 6}, {17, 29, 16, 24}};

// bits[j] for counters begin .. end (j = counter - begin).
void threefry_bits(uint32_t k0, uint32_t k1, uint64_t begin, uint64_t end, uint32_t* bits) {
  const uint32_t ks[3] = {k0, k1, k0 ^ k1 ^ 0x1BD11BDAu};  // the key schedule
  const int64_t n = static_cast<int64_t>(end - begin);
  for (int64_t j = 0; j < n; ++j) {  // vectorised by the compiler: u32 arithmetic only
    const uint64_t c = begin + static_cast<uint64_t>(j);
    uint32_t x0 = static_cast<uint32_t>(c >> 32) + ks[0];
    uint32_t x1 = static_cast<uint32_t>(c) + ks[1];
    for (uint32_t i = 0; i < 5; ++i) {  // five groups of four rounds, each then a key injection
      for (uint32_t r : kRotations[i % 2]) {
        x0 += x1;
        x1 = rotl(x1, r);
        x1 ^= x0;
      }
      x0 += ks[(i + 1) % 3];
      x1 += ks[(i + 2) % 3] + i + 1;
    }
    bits[j] = x0 ^ x1;
  }
}

ffi::Error ThreefryBitsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> key,
                            ffi::ResultBuffer<ffi::U32> bits) {
  const auto kd = key.dimensions();
  if (kd.size() < 1 || kd[kd.size() - 1] != 2)
    return ffi::Error::InvalidArgument("avemo_threefry_bits: key must be u32[..., 2]");
  const int64_t keys = static_cast<int64_t>(key.element_count()) / 2;
  const int64_t total = static_cast<int64_t>(bits->element_count());
  if (keys <= 0 || total % keys)
    return ffi::Error::InvalidArgument("avemo_threefry_bits: bits must be [..., *shape] like key");
  const int64_t per_key = total / keys;
  constexpr int64_t kChunk = 1 << 15;
  const int64_t chunks = (per_key + kChunk - 1) / kChunk;
  parallel_for(pool, keys * chunks, [&](int64_t item) {
    const int64_t k = item / chunks, begin = (item % chunks) * kChunk;
    const int64_t end = std::min(per_key, begin + kChunk);
    threefry_bits(key.typed_data()[2 * k], key.typed_data()[2 * k + 1], begin, end,
                  bits->typed_data() + k * per_key + begin);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AvemoThreefryBits, ThreefryBitsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>());
