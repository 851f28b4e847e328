"""Preparation cache: runs the audio and video front ends once per session, then reuses the result.

raw session files -> `avemo.audio.frontend` + `avemo.video.frontend` -> one cache entry per
(session files' content, front-end config) -> `PreparedSession`s for the Grain pipeline, with the
audio features z-normalised (Eq. 9) by statistics fitted on the training sessions only and saved
in the workdir (`normalizer.npz`), where evaluation and prediction find them again.

An entry is a directory of .npy files plus `meta.json`; it is built under a temporary name and
renamed into place when complete, so an interrupted run leaves nothing that looks complete.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from avemo.data.corpora import Session, get_sessions
from avemo.data.pipeline import PreparedSession

log = logging.getLogger("avemo")

# Bump when the layout or meaning of an entry changes: old entries are then ignored.
CACHE_VERSION = 1
_ARRAYS = (
    "faces",
    "face_present",
    "face_boxes",
    "audio_features",
    "logmel",
    "speech_energy",
    "speech_mask",
)
NORMALIZER_FILE = "normalizer.npz"


def cache_root(data_cfg: ml_collections.ConfigDict) -> pathlib.Path:
    """`config.data.cache_dir`, or $XDG_CACHE_HOME/avemo/prepared (~/.cache by default)."""
    if data_cfg.cache_dir:
        return pathlib.Path(data_cfg.cache_dir).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(cache) / "avemo" / "prepared"


def _file_digest(path: pathlib.Path | None) -> str:
    if path is None:
        return "-"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(session: Session, config: ml_collections.ConfigDict) -> str:
    """Digest of the session's input files' content and of every front-end setting."""
    parts = {
        "version": CACHE_VERSION,
        # 2: one container clock for audio/video, gap filling, new stereo mix-down;
        # 3: gray frames from the luma plane, cheaper face tracking (new detector keys)
        "frontend": 3,
        "video": _file_digest(session.video_path),
        "audio": _file_digest(session.audio_path),
        "frame_times": _file_digest(session.frame_times_path),
        "labels": [_file_digest(p) for p in session.label_paths],
        "step_seconds": session.step_seconds,
        "audio_cfg": config.audio.to_dict(),
        "video_cfg": config.video.to_dict(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def entry_dir(root: pathlib.Path, session: Session, key: str) -> pathlib.Path:
    return root / f"{session.name}-{key[:20]}"


def is_complete(entry: pathlib.Path) -> bool:
    return (entry / "meta.json").is_file()


def run_front_ends(session: Session, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Both front ends on one session, on the grid of its labels (or of its video)."""
    from avemo.audio import frontend as audio_frontend
    from avemo.video import frontend as video_frontend

    labels = session.load_labels()
    if labels is not None:
        num_steps = int(labels.values.shape[0])
    else:
        num_steps = video_frontend.num_steps_for(session.video_path, session.step_seconds)
    audio_source = session.audio_path if session.audio_path is not None else session.video_path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        audio = audio_frontend.extract(
            audio_source, num_steps, config.audio, step_seconds=session.step_seconds
        )
        video = video_frontend.extract(
            session.video_path,
            num_steps,
            config.video,
            session.frame_times_path,
            step_seconds=session.step_seconds,
        )
    for w in caught:
        log.warning("%s: %s", session.name, w.message)
    arrays = {k: v for k, v in {**audio, **video}.items() if k in _ARRAYS}
    arrays["audio_feature_names"] = audio["audio_feature_names"]
    if labels is not None:
        arrays["labels"] = labels.values.astype(np.float32)
    return arrays


def _build_entry(session: Session, config_json: str, root: str, key: str) -> str:
    """Worker: computes one session and renames its finished directory into place."""
    config = ml_collections.ConfigDict(json.loads(config_json))
    final = entry_dir(pathlib.Path(root), session, key)
    arrays = run_front_ends(session, config)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{session.name}-"))
    try:
        for name, value in arrays.items():
            np.save(tmp / f"{name}.npy", value, allow_pickle=False)
        meta = {
            "session": session.name,
            "split": session.split,
            "key": key,
            "num_steps": int(arrays["face_present"].shape[0]),
            "arrays": sorted(arrays),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # written last
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished the same entry first
            if not is_complete(final):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(final)


def prepare(
    sessions: Sequence[Session], config: ml_collections.ConfigDict, workers: int | None = None
) -> dict[str, pathlib.Path]:
    """Ensures a complete cache entry for every session; returns name -> entry directory.

    Sessions already in the cache are not touched. Missing ones are computed in `workers`
    processes (`config.data.prepare_workers`) with a progress bar.
    """
    root = cache_root(config.data)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # leftovers of interrupted runs (never look complete)
        if stale.is_dir() and not _is_fresh(stale):
            shutil.rmtree(stale, ignore_errors=True)
    entries, todo = {}, []
    for session in sessions:
        key = cache_key(session, config)
        entry = entry_dir(root, session, key)
        entries[session.name] = entry
        if not is_complete(entry):
            todo.append((session, key))
    log.info(
        "Preparation cache %s: %d of %d sessions cached, %d to prepare.",
        root,
        len(sessions) - len(todo),
        len(sessions),
        len(todo),
    )
    if not todo:
        return entries
    config_json = config.to_json()
    workers = max(1, min(workers or config.data.prepare_workers, len(todo)))
    from tqdm import tqdm

    progress = tqdm(total=len(todo), desc="preparing sessions", unit="session", disable=None)
    if workers == 1:
        for session, key in todo:
            _build_entry(session, config_json, str(root), key)
            progress.update()
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding JAX
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(_build_entry, s, config_json, str(root), k) for s, k in todo]
            for future in concurrent.futures.as_completed(futures):
                future.result()
                progress.update()
    progress.close()
    return entries


def _is_fresh(path: pathlib.Path, seconds: float = 6 * 3600) -> bool:
    """A temporary entry younger than this may belong to a concurrent run: leave it."""
    import time

    return time.time() - path.stat().st_mtime < seconds


def load_entry(entry: pathlib.Path) -> dict[str, np.ndarray]:
    """Arrays of a complete entry; large ones memory-mapped."""
    meta = json.loads((entry / "meta.json").read_text())
    return {
        name: np.load(entry / f"{name}.npy", mmap_mode="r" if name == "faces" else None)
        for name in meta["arrays"]
    }


def fit_or_load_normalizer(
    raw: Mapping[str, Mapping[str, np.ndarray]], splits: Mapping[str, str], workdir: str | None
) -> Any:
    """Eq. (9) statistics: loaded from the workdir if saved there, else fitted on train only."""
    from avemo.audio import normalize

    path = None if workdir is None else os.path.join(workdir, NORMALIZER_FILE)
    if path is not None and os.path.exists(path):
        return normalize.load(path)
    names = next(iter(raw.values()))["audio_feature_names"]
    normalizer = normalize.fit_training(
        {name: arrays["audio_features"] for name, arrays in raw.items()}, splits, names
    )
    if path is not None:
        import jax

        if jax.process_index() == 0:
            normalize.save(path, normalizer)
    return normalizer


def to_prepared(
    session: Session, arrays: Mapping[str, np.ndarray], normalizer: Any
) -> PreparedSession:
    """Model-ready arrays: normalised audio features, everything else as cached."""
    from avemo.audio import normalize

    out = {
        k: v
        for k, v in arrays.items()
        if k not in ("audio_feature_names", "face_boxes", "speech_mask")
    }
    out["audio_features"] = normalize.apply(
        arrays["audio_features"], normalizer, arrays["audio_feature_names"]
    )
    return PreparedSession(session.name, session.split, out)


def prepared_sessions(
    config: ml_collections.ConfigDict, workdir: str | None
) -> list[PreparedSession]:
    """Sessions of `config.data`, prepared (cached) and normalised, ready for the pipeline."""
    sessions = get_sessions(config.data)
    entries = prepare(sessions, config)
    raw = {s.name: load_entry(entries[s.name]) for s in sessions}
    normalizer = fit_or_load_normalizer(raw, {s.name: s.split for s in sessions}, workdir)
    return [to_prepared(s, raw[s.name], normalizer) for s in sessions]
