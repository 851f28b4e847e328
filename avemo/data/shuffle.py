"""Grain's index shuffle, one epoch at a time: the same order, a fraction of the cost.

`grain.MapDataset.shuffle(seed)` maps each index i of epoch e to `index_shuffle(i, n - 1,
seed + e, rounds=4)`: a 4-round Simon cipher keyed by `std::seed_seq{seed}` on a domain of at
least 2^16 values, cycle-walked until it lands in [0, n). Each call walks ~2^16 / n steps, so
with the default corpus's 330 training windows an index costs ~75 us and a batch of 8 ~0.6 ms
of the pipeline's CPU -- a sixth of a frozen-face train step on 2 cores (docs/performance.md).

`EpochShuffleMapDataset` computes the permutation of a whole epoch at once with numpy (the
cipher on the whole domain, then the cycle walks by pointer jumping: ~6 ms per epoch) and
serves the epoch's indices from it. The order is Grain's, index for index
(tests/data/test_shuffle.py compares it with Grain's own `index_shuffle`), so training runs,
resumes and checkpoints are unchanged.
"""

from __future__ import annotations

import math
import threading

import grain
import numpy as np
from grain._src.python.experimental.index_shuffle.python import index_shuffle_module

_M32 = 0xFFFFFFFF
# Domains larger than this (2^26 values, 512 MB of uint64) fall back to Grain's per-index walk.
_MAX_DOMAIN_BITS = 26


def seed_seq_words(seed: int, n: int) -> list[int]:
    """`std::seed_seq{seed}.generate(n words)` (C++11 [rand.util.seedseq]): the round keys."""
    v, b = [seed & _M32], [0x8B8B8B8B] * n
    s = len(v)
    t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
    p = (n - t) // 2
    q, m = p + t, max(s + 1, n)

    def mix(x: int) -> int:
        return (x ^ (x >> 27)) & _M32

    for k in range(m):
        r1 = (1664525 * mix(b[k % n] ^ b[(k + p) % n] ^ b[(k - 1) % n])) & _M32
        r2 = (r1 + (s if k == 0 else (k % n + v[k - 1] if k <= s else k % n))) & _M32
        b[(k + p) % n] = (b[(k + p) % n] + r1) & _M32
        b[(k + q) % n] = (b[(k + q) % n] + r2) & _M32
        b[k % n] = r2
    for k in range(m, m + n):
        r3 = (1566083941 * mix((b[k % n] + b[(k + p) % n] + b[(k - 1) % n]) & _M32)) & _M32
        r4 = (r3 - (k % n)) & _M32
        b[(k + p) % n] ^= r3
        b[(k + q) % n] ^= r4
        b[k % n] = r4
    return b


def _domain_bits(max_index: int) -> int:
    bits = math.ceil(math.log2(max_index))
    return max(bits + bits % 2, 16)  # even, at least 16 (Grain's kMinBlockSize)


def _simon(bits: int, keys: list[int]) -> np.ndarray:
    """The cipher on every value of the domain [0, 2^bits): word size bits / 2, two rounds per
    pair of keys, f(x) = (x <<< 1 & x <<< 8) ^ x <<< 2."""
    w = bits // 2
    mask = np.uint64((1 << w) - 1)

    def rotl(v, r):
        return ((v << np.uint64(r)) | (v >> np.uint64(w - r))) & mask

    def f(v):
        return (rotl(v, 1) & rotl(v, 8)) ^ rotl(v, 2)

    x = np.arange(1 << bits, dtype=np.uint64)
    left, right = x >> np.uint64(w), x & mask
    for i in range(0, len(keys), 2):
        left = left ^ f(right) ^ (np.uint64(keys[i]) & mask)
        right = right ^ f(left) ^ (np.uint64(keys[i + 1]) & mask)
    return (left << np.uint64(w)) | right


def epoch_permutation(n: int, seed: int, rounds: int = 4) -> np.ndarray | None:
    """perm[i] = Grain's `index_shuffle(i, max_index=n - 1, seed, rounds)` for i < n, or None
    where the domain is too large to hold (the caller then asks Grain index by index)."""
    if n <= 1:
        return np.zeros(max(n, 0), np.int64)
    max_index = n - 1
    bits = _domain_bits(max_index)
    if bits > _MAX_DOMAIN_BITS or max_index >= 1 << bits:
        # (n - 1 = 2^k >= 2^16 does not fit Grain's domain of k bits, which then truncates the
        # index: reproduced only by asking Grain)
        return None
    step = _simon(bits, seed_seq_words(seed & _M32, rounds))
    # Cycle walking: from i, apply the cipher until the value is <= max_index. Pointer jumping:
    # nxt[y] = the value k >= 1 cipher steps after y with every value in between out of range;
    # out-of-range pointers jump by their target's pointer, so after j rounds a walk of up to
    # 2^j steps is resolved.
    nxt = step
    for _ in range(bits + 1):
        far = nxt > max_index
        if not far[:n].any():
            break
        nxt[far] = nxt[nxt[far]]
    return nxt[:n].astype(np.int64)


class EpochShuffleMapDataset(grain.MapDataset):
    """`parent.shuffle(seed)` of Grain, the same order (see the module docstring)."""

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        if not 0 <= seed < 2**32:
            raise ValueError(f"the shuffle seed must be in [0, 2**32), got {seed}")
        self._seed = int(seed)
        self._lock = threading.Lock()
        self._cached: tuple[int, np.ndarray | None] | None = None

    def __len__(self) -> int:
        return len(self._parent)

    def __str__(self) -> str:
        return f"EpochShuffleMapDataset(seed={self._seed})"

    def _permutation(self, epoch: int) -> np.ndarray | None:
        with self._lock:  # Grain's reading threads ask concurrently; one computes the epoch
            if self._cached is None or self._cached[0] != epoch:
                n = len(self._parent)
                self._cached = (epoch, epoch_permutation(n, (self._seed + epoch) % 2**32))
            return self._cached[1]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        n = len(self._parent)
        epoch, i = divmod(index, n)
        perm = self._permutation(epoch)
        if perm is None:  # a domain we do not reproduce: Grain's own walk
            j = index_shuffle_module.index_shuffle(
                i, max_index=n - 1, seed=(self._seed + epoch) % 2**32, rounds=4
            )
        else:
            j = int(perm[i])
        return self._parent[j + epoch * n]
