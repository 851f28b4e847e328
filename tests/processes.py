"""Helpers for tests that run avemo in child processes: probes on N host CPU devices, and
stopping a training run with SIGTERM once it has logged a few steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from avemo.reporting.writers import read_metrics
from tests.conftest import ROOT


def host_device_probe(script: str, args: list[str], devices: int) -> dict:
    """Runs `python script *args` on `devices` host CPU devices; its last stdout line (JSON)."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
    )
    out = subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def sigterm_after_steps(command: list[str], workdir, steps: int) -> tuple[int, str, int]:
    """Starts `command`, sends SIGTERM once `workdir`'s metrics reach `steps`; returns its exit
    status, its output and the last step it logged."""
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        rows = read_metrics(str(workdir)) if os.path.exists(workdir) else []
        if rows and rows[-1]["step"] >= steps:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output, max(r["step"] for r in read_metrics(str(workdir)))
