"""Corpora: where each session's raw files are (video, audio, frame times, labels).

``get_sessions(config.data)`` dispatches on ``config.data.corpus``: ``synthetic`` (the embedded
corpus, generated on first use), ``avec2016`` (the official release layout) or ``folder`` (users'
own data). All return ``Session`` records (docs/contracts.md, Corpora).
"""

from __future__ import annotations

import os
import pathlib

from avemo.data.corpora import avec2016, folder, synthetic
from avemo.data.corpora.base import CorpusError, Labels, Session

__all__ = ["CorpusError", "Labels", "Session", "get_sessions", "synthetic_root"]


def synthetic_root(cfg) -> pathlib.Path:
    """Where the embedded corpus for ``cfg`` (``config.data``) lives."""
    if cfg.root:
        return pathlib.Path(cfg.root).expanduser()
    options = synthetic.SyntheticOptions.from_config(cfg.synthetic)
    cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(cache) / "avemo" / "synthetic" / options.fingerprint()


def get_sessions(cfg) -> list[Session]:
    """The sessions of the corpus described by ``cfg`` (``config.data``).

    Raises:
      CorpusError: naming the file, when the corpus is missing or broken.
      ValueError: for an unknown ``cfg.corpus``.
    """
    if cfg.corpus == "synthetic":
        options = synthetic.SyntheticOptions.from_config(cfg.synthetic)
        root = synthetic.generate(synthetic_root(cfg), options, workers=cfg.synthetic.workers)
        return avec2016.read_sessions(root, cfg.step_seconds)
    if cfg.corpus == "avec2016":
        if not cfg.root:
            raise CorpusError("config.data.root must name the AVEC2016 copy (corpus='avec2016')")
        return avec2016.read_sessions(pathlib.Path(cfg.root).expanduser(), cfg.step_seconds)
    if cfg.corpus == "folder":
        if not cfg.root:
            raise CorpusError("config.data.root must name the data folder (corpus='folder')")
        return folder.read_sessions(
            pathlib.Path(cfg.root).expanduser(),
            cfg.step_seconds,
            cfg.folder.dev_fraction,
            cfg.folder.split_seed,
        )
    raise ValueError(
        f"config.data.corpus is {cfg.corpus!r}; expected 'synthetic', 'avec2016' or 'folder'"
    )
