"""A tiny model trained on a tiny generated corpus, built once per test process.

Shared by the prediction and evaluation tests (a plain helper rather than a conftest fixture, so
that both modules reuse one training run): 2 train + 1 dev + 1 test sessions of 8 s, 32x32 faces,
a few optimisation steps.
"""

from __future__ import annotations

import pathlib
import sys

import ml_collections

from avemo import train
from avemo.data.corpora import synthetic
from configs import tiny

OPTIONS = synthetic.SyntheticOptions(
    seed=0, train_sessions=2, dev_sessions=1, test_sessions=1, seconds=8.0
)
_BUILT: dict[str, tuple[pathlib.Path, ml_collections.ConfigDict]] = {}

# Every file opened under a hidden test-label folder, with the phase it was opened in (a process
# audit hook, installed once: it sees every Python-level open, whichever code does it).
HIDDEN_OPENS: list[tuple[str, str]] = []
PHASE = {"name": "idle"}


def _audit(event: str, args: tuple) -> None:
    if event == "open" and args and synthetic.HIDDEN_DIR in str(args[0]):
        HIDDEN_OPENS.append((PHASE["name"], str(args[0])))


sys.addaudithook(_audit)


def tiny_recordings_config(root: pathlib.Path, cache: pathlib.Path) -> ml_collections.ConfigDict:
    """`configs/tiny.py`'s model on the generated corpus in `root` (AVEC layout)."""
    c = tiny.get_config()
    c.data.corpus = "avec2016"
    c.data.root = str(root)
    c.data.cache_dir = str(cache)
    c.data.prepare_workers = 1
    c.video.crop_size = 32
    c.train.window_steps = 50
    c.train.window_hop_steps = 25
    c.train.batch_size = 4
    c.train.num_steps = 4
    c.train.eval_every_steps = 4
    c.train.checkpoint_every_steps = 4
    c.eval.window_steps = 100
    c.eval.context_steps = 20
    c.eval.batch_size = 4
    c.checkpoint.async_save = False
    c.eval.report_at_end = False
    return c


def trained_workdir(tmp_path_factory) -> tuple[pathlib.Path, ml_collections.ConfigDict]:
    """(workdir, config) of the tiny trained model; trained on first use in this process."""
    if "model" not in _BUILT:
        base = tmp_path_factory.mktemp("trained_model")
        root = synthetic.generate(base / "corpus", OPTIONS, workers=1, progress=False)
        config = tiny_recordings_config(root, base / "cache")
        workdir = base / "workdir"
        PHASE["name"] = "training"  # preparation, training, checkpoint selection
        try:
            train.train_and_evaluate(config, str(workdir))
        finally:
            PHASE["name"] = "idle"
        _BUILT["model"] = (workdir, config)
    return _BUILT["model"]
