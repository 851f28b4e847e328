"""Reading a finished run's checkpoint back in tests."""

from __future__ import annotations

import os

from avemo import checkpointing, train


def latest_state(workdir: str | os.PathLike, config):
    """The TrainState of `workdir`'s latest checkpoint, restored with the target a separate run
    of `config` builds (so population members and multi-process runs compare like for like)."""
    workdir = os.fspath(workdir)
    sessions = train.load_sessions(config, workdir)
    trainer = train.Trainer(config, train.example_batch(sessions, config, 1), 1)
    ckpt = checkpointing.Checkpointer(workdir, "dev/ccc_pooled/mean", async_save=False)
    try:
        state, _ = ckpt.restore(ckpt.latest_step(), trainer.restore_target(), None)
    finally:
        ckpt.close()
    return state
