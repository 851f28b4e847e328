"""Native CPU kernels: XLA FFI handlers written in C++, compiled on first use on this machine.

`library(name)` compiles `<name>.cc` of this package with the machine's C++ compiler (`$CXX`,
else `c++`) against the XLA FFI headers that ship with jaxlib, caches the shared library by
content (source and headers, compiler, flags, jaxlib's version, CPU), and registers its
handlers with JAX. Without a compiler, or with `AVEMO_NATIVE=0`, it returns None and callers
use their pure-XLA path (one warning says so). Nothing is downloaded; the build takes a few
seconds once per machine.

Cache: `$AVEMO_NATIVE_CACHE`, else `$XDG_CACHE_HOME/avemo/native`, else `~/.cache/avemo/native`.
The library is compiled for the CPU that builds it (`-march=native`), so the CPU's model and
feature flags are part of the key: nodes of a cluster with other CPUs build their own.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jaxlib

log = logging.getLogger(__name__)

# The FFI handlers each library exports (symbol = JAX target name, CamelCase -> snake_case).
HANDLERS = {
    "lstm_cpu": ("AvemoLstmFwd", "AvemoLstmBwd"),
    "attention_cpu": ("AvemoAttentionPool", "AvemoAttentionPoolBwd"),
    "random_cpu": ("AvemoThreefryBits",),
    "conv_pool_cpu": ("AvemoConvPool", "AvemoConvPoolBwd", "AvemoConvPoolBwdX"),
}
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-w")
_ARCH_FLAGS = ("-march=native",)

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def target_name(symbol: str) -> str:
    """The JAX FFI target of an exported handler: AvemoLstmFwd -> avemo_lstm_fwd."""
    return "".join("_" + c.lower() if c.isupper() else c for c in symbol).lstrip("_")


def cache_dir() -> Path:
    if os.environ.get("AVEMO_NATIVE_CACHE"):
        return Path(os.environ["AVEMO_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "avemo" / "native"


def _cpu_signature() -> str:
    """The CPU's model name and feature flags (Linux), else what `platform` knows."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        fields = ("model name", "flags")
        keep = [ln for ln in text.splitlines() if ln.split(":")[0].strip() in fields]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def source_path(name: str) -> Path:
    return Path(__file__).with_name(f"{name}.cc")


def _build(name: str, compiler: str) -> Path:
    """The shared library of `<name>.cc`, compiled now unless the cache holds it."""
    source = source_path(name)
    here = Path(__file__).parent  # common.h
    headers = "".join(h.read_text() for h in sorted(here.glob("*.h")))
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        "\0".join(
            [source.read_text(), headers, version, " ".join(FLAGS + _ARCH_FLAGS),
             jaxlib.__version__, jax.ffi.include_dir(), _cpu_signature()]
        ).encode()
    ).hexdigest()[:16]  # fmt: skip
    out = cache_dir() / f"{name}-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", prefix=f".{name}-", dir=out.parent)
    os.close(fd)
    try:
        cmd = [
            compiler,
            *FLAGS,
            "-I",
            jax.ffi.include_dir(),
            "-I",
            str(here),
            str(source),
            "-o",
            tmp,
        ]
        run = subprocess.run([*cmd[:1], *_ARCH_FLAGS, *cmd[1:]], capture_output=True, text=True)
        if run.returncode:  # a compiler without -march=native: the generic target
            run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"{compiler} failed on {source.name}:\n{run.stderr[-2000:]}")
        os.replace(tmp, out)  # atomic: concurrent builders write the same bytes
        log.info("built %s", out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def available(name: str) -> bool:
    """Whether `name`'s kernels can serve this process's programs: a CPU backend (on
    accelerators nothing is compiled; callers' `platform_dependent` picks XLA's ops there
    anyway) and the library built and registered."""
    return jax.default_backend() == "cpu" and library(name) is not None


def library(name: str) -> ctypes.CDLL | None:
    """The loaded library `name` with its handlers registered for the CPU, or None (see above)."""
    with _lock:
        if name in _loaded:
            return _loaded[name]
        lib = None
        reason = None
        compiler = _compiler()
        if os.environ.get("AVEMO_NATIVE", "1") == "0":
            reason = "AVEMO_NATIVE=0"
        elif compiler is None:
            reason = f"no C++ compiler ({os.environ.get('CXX', 'c++')}) on PATH"
        else:
            try:
                lib = ctypes.cdll.LoadLibrary(str(_build(name, compiler)))
                for symbol in HANDLERS[name]:
                    jax.ffi.register_ffi_target(
                        target_name(symbol), jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu"
                    )
            except (OSError, RuntimeError, AttributeError) as e:
                lib, reason = None, str(e)
        if lib is None and reason != "AVEMO_NATIVE=0":
            warnings.warn(
                f"avemo's native CPU kernel {name!r} is unavailable ({reason}); using the pure-XLA "
                "path (same results, slower on CPU)",
                RuntimeWarning,
                stacklevel=2,
            )
        _loaded[name] = lib
        return lib
