"""XLA CPU settings avemo applies before JAX starts its backends (see docs/performance.md).

XLA CPU (jaxlib 0.10-0.11) hands convolutions to YNNPACK by default. For the face CNN's small
channel counts (1 -> 8 -> 16 -> 32) YNNPACK's weight gradients are slow: in the default train
step the three weight gradients and their transposes took ~40 % of the step. With YNNPACK kept for
dots, element-wise and reduce fusions but not for convolutions
(`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`), XLA's own convolutions run
and the end-to-end default step is 10-16 % faster (docs/performance.md; the frozen-face step,
which has no convolution, is unchanged). Only CPU code generation is affected.

The flag is experimental: it is added only for the jaxlib versions it was checked with (an
unknown value makes XLA abort at start-up), only when XLA_FLAGS does not set it already, and not
at all with AVEMO_XLA_DEFAULTS=0. It takes effect if avemo is imported before JAX runs its first
computation (every avemo entry point does).
"""

from __future__ import annotations

import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
CHECKED_JAXLIB = ((0, 10), (0, 11))  # major.minor versions where the flag was checked


def _jaxlib_version() -> tuple[int, int] | None:
    from importlib import metadata

    try:
        major, minor = metadata.version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def apply_defaults(environ: dict | None = None) -> bool:
    """Adds avemo's CPU flags to XLA_FLAGS in `environ` (default os.environ); True if added."""
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if env.get("AVEMO_XLA_DEFAULTS", "1") == "0" or "ynn_fusion_type" in flags:
        return False
    if _jaxlib_version() not in CHECKED_JAXLIB:
        return False
    env["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    return True
