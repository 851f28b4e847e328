"""Host memory between the phases of a run: what a finished phase held goes back to the system.

A run's phases (the face stage, the fusion, the dev and test reports) share one process. Python
frees their arrays, but glibc keeps the freed heap pages (and its per-thread arenas) for reuse,
and JAX keeps every compiled program; so each phase used to start from the previous one's peak.
Measured on the default config (docs/performance.md, memory): after 71 training steps and an
evaluation, 1.39 GB of resident memory held 0.71 GB of live data; `malloc_trim` returned the rest.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Any

import jax


def _glibc() -> Any:
    """glibc, for `malloc_trim` (None where the C library is another: musl, macOS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


def trim() -> None:
    """Collects unreachable objects and returns glibc's free heap pages to the system (no-op
    without glibc). Cheap enough for a training loop's evaluation points, not for every step."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def release() -> None:
    """`trim`, after dropping JAX's compiled programs and caches: for the end of a phase, when
    the next phase compiles its own programs. (Collected before the caches are cleared, so that
    programs held only by dead objects go too, and again in `trim` for what the caches held.)"""
    gc.collect()
    jax.clear_caches()
    trim()
