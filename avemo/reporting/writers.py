"""Metric writers: TensorBoard event files, the log, and a JSON-lines file, written by process 0.

Follows clu's `MetricWriter` interface (write_scalars / write_hparams / flush / close). clu's own
writers are not used: `clu.metric_writers` imports TensorFlow at import time (a 274 MB wheel,
2.2 GB installed, +3 s per process start, measured here), so TensorBoard events are written with
tensorboardX, which needs neither TensorFlow nor PyTorch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger("avemo")


class MetricWriter:
    """Writes scalars to TensorBoard (`workdir/tensorboard`), the log and `workdir/metrics.jsonl`.

    On processes other than 0 every call is a no-op.
    """

    def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
        self._enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")  # noqa: SIM115

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        if not self._enabled:
            return
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        log.info("[%d] %s", step, ", ".join(f"{k}={v:.5g}" for k, v in sorted(values.items())))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        if not self._enabled or self._tb is None:
            return
        flat = {
            k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in hparams.items()
        }
        self._tb.add_text("config", "\n".join(f"{k}: {v}" for k, v in sorted(flat.items())), 0)

    def flush(self) -> None:
        if self._enabled:
            if self._tb is not None:
                self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self._enabled:
            self.flush()
            if self._tb is not None:
                self._tb.close()
            self._jsonl.close()
            self._enabled = False


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """Rows of `workdir/metrics.jsonl`, in order written."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
