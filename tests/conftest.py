"""Shared test set-up: absl flags parsed (Grain workers need it), the repository on sys.path, and
one JAX compilation cache for the whole run."""

import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# JAX's persistent compilation cache, shared by every process of one test run (the pytest-xdist
# workers and the child processes tests start inherit the environment): dozens of tests train
# the same tiny configs, and each new `Trainer` jits the same programs again; with the cache,
# an identical program (same HLO, options, flags and devices: JAX's cache key) is compiled once
# per run and loaded afterwards. It changes no result, only compile time. The controller (or a
# plain pytest process) makes a fresh folder and removes it at the end; a user's own
# JAX_COMPILATION_CACHE_DIR wins.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="avemo-test-jit-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# XLA's CPU backend at LLVM optimisation level 0 for the test process (and its pytest-xdist
# workers): the suite compiles hundreds of small programs, most of each compile is LLVM optimising
# machine code that then runs on a few windows, and the suite's wall time drops by about a third.
# The HLO passes -- fusion, layout, the algebraic rewrites that decide what is computed -- are
# those of a normal run. Child processes inherit it, except those whose environment sets
# XLA_FLAGS itself (tests/processes.py: the multi-device probes; the multi-process and SLURM
# tests), which run at the default level. A user's own setting of the flag wins.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
    flags.FLAGS(sys.argv[:1])


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
