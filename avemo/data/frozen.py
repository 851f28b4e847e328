"""Frozen face branch (Sec. 6.4, two-stage training): its feature maps computed once and cached.

With `config.model.freeze_video` the face CNN keeps its stage-1 weights and runs in inference mode
(BatchNorm running statistics, no dropout) under `stop_gradient`. Its feature maps then depend
only on (the branch's weights, the face crops) and never change during training, so they are
computed once per session and stored in the preparation cache, and the fusion trains on them:
the pipeline carries `face_features` [L, k, C] per window instead of `faces`, and
`BimodalModel._face_maps` uses them instead of running the CNN (outputs equal, tested).

Cache entry: `<cache_root>/frozen/<session>-<key[:20]>/feature_maps.npy` (+ `meta.json`), where
key = sha256 of (the branch's weights and batch statistics, by content; the face network's
configuration; the session's face crops, by content -- which covers the video front-end config;
the video front-end config itself). A new stage-1 checkpoint, another face size or other crops
give a new entry. Entries are written under a temporary name and renamed when complete.

API (also for population training, which shares one computation across members):
  branch_variables(params, batch_stats)        -> the frozen branch's Flax variables
  initial_branch_variables(config, trainer)    -> the branch as a fresh run starts it (init +
                                                  `model.video_init`)
  attach(sessions, config, branch_vars)        -> sessions with `face_features`, without `faces`
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from avemo.data.pipeline import PreparedSession

log = logging.getLogger("avemo")

BRANCH = "alexnet"  # the video branch's name inside BimodalModel
FEATURES_KEY = "face_features"
# A session's (not a step's) array beside the cached maps: the frozen CNN's map of a blank crop
# [k, C], what a step without a face gives (crops are zeros where no face is found). Windows
# whose face modality dropout removes get it instead of zero maps (`pipeline.WindowSource.
# faceless`), as the live CNN sees zero crops there and in the face-removed protocol.
BLANK_KEY = "blank_face_features"
CACHE_VERSION = 1
_FILE = "feature_maps.npy"


def enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether training runs on cached frozen feature maps instead of the live face CNN (a
    frozen face CNN, alone or as part of a frozen face stream)."""
    m = config.model
    frozen_cnn = m.freeze_video or m.freeze_face_stream
    return bool(frozen_cnn and m.frozen_feature_cache and m.mode != "audio")


def branch_variables(params: Mapping[str, Any], batch_stats: Mapping[str, Any] | None) -> dict:
    """The frozen branch's Flax variables out of the bimodal model's params / batch stats."""
    if BRANCH not in params:
        raise ValueError(f"the model has no {BRANCH!r} video branch")
    out = {"params": params[BRANCH]}
    if batch_stats and BRANCH in batch_stats:
        out["batch_stats"] = batch_stats[BRANCH]
    return out


def initial_branch_variables(config: ml_collections.ConfigDict, trainer: Any) -> dict:
    """The branch as a fresh run starts it: initialised from the seed, then `model.video_init`."""
    state = trainer.init_state()
    params, stats = state.params, state.batch_stats
    if config.model.video_init:
        from avemo import stage1

        params, stats = stage1.load_into(params, stats, config.model.video_init)
    return jax.device_get(branch_variables(params, stats))


def weights_digest(variables: Mapping[str, Any]) -> str:
    """sha256 over the branch's arrays (path, dtype, shape, bytes) -- the checkpoint's content."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _array_digest(array: np.ndarray) -> str:
    h = hashlib.sha256()
    array = np.asarray(array)
    h.update(f"{array.dtype}|{array.shape}|".encode())
    step = max(1, (64 << 20) // max(1, array[:1].nbytes))  # ~64 MB at a time (memory-mapped)
    for i in range(0, array.shape[0], step):
        h.update(np.ascontiguousarray(array[i : i + step]).tobytes())
    return h.hexdigest()


def _net_config(config: ml_collections.ConfigDict) -> dict:
    m = config.model
    return {
        "alexnet": m.alexnet.to_dict(),
        "dtype": m.dtype,
        "pool_impl": m.pool_impl,
        "patch_conv_channels": m.patch_conv_channels,
        "phase_conv_channels": m.phase_conv_channels,
        "num_outputs": m.num_outputs,
    }


def feature_key(weights: str, faces_digest: str, config: ml_collections.ConfigDict) -> str:
    """Cache key of one session's feature maps (see the module docstring)."""
    parts = {
        "version": CACHE_VERSION,
        "weights": weights,
        "faces": faces_digest,
        "net": _net_config(config),
        "video_cfg": config.video.to_dict(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def frozen_root(config: ml_collections.ConfigDict) -> pathlib.Path:
    from avemo.data.prepare import cache_root

    return cache_root(config.data) / "frozen"


def feature_extractor(config: ml_collections.ConfigDict, batch_size: int = 128):
    """faces [N, H, W, C] (uint8) -> feature maps [N, k, C3] float32, by the inference-mode CNN.

    Frames go through in fixed-size chunks (the last one padded) so that one compilation serves.
    """
    from avemo.models.backbones import build_backbone

    net = build_backbone("improved_alexnet", config)

    @jax.jit
    def apply(variables, faces):
        fmap = net.apply(variables, faces, train=False, head=False)["feature_map"]
        return fmap.reshape(fmap.shape[0], -1, fmap.shape[-1]).astype(jnp.float32)

    def extract(variables: Mapping[str, Any], faces: np.ndarray) -> np.ndarray:
        n = faces.shape[0]
        out = None
        for start in range(0, n, batch_size):
            chunk = np.asarray(faces[start : start + batch_size])
            valid = chunk.shape[0]
            if valid < batch_size:
                pad = np.zeros((batch_size - valid,) + chunk.shape[1:], chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            maps = np.asarray(apply(variables, chunk))[:valid]
            if out is None:
                out = np.empty((n,) + maps.shape[1:], np.float32)
            out[start : start + valid] = maps
        return out

    return extract


def _write_entry(final: pathlib.Path, maps: np.ndarray, meta: Mapping[str, Any]) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        np.save(tmp / _FILE, maps, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # written last
        try:
            os.replace(tmp, final)
        except OSError:  # a concurrent run finished the same entry first
            if not (final / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def attach(
    sessions: Sequence[PreparedSession],
    config: ml_collections.ConfigDict,
    variables: Mapping[str, Any],
    batch_size: int = 128,
) -> list[PreparedSession]:
    """Sessions whose `faces` are replaced by the frozen branch's cached `face_features`.

    Computes (once) and caches the feature maps of every session that has faces; loads cached
    ones memory-mapped. `variables` = `branch_variables(...)` of the frozen branch.
    """
    root = frozen_root(config)
    digest = weights_digest(variables)
    variables = jax.device_get(variables)
    extract = None
    blank = None
    out, computed = [], 0
    for session in sessions:
        if "faces" not in session.arrays:
            out.append(session)
            continue
        faces = session.arrays["faces"]
        key = feature_key(digest, _array_digest(faces), config)
        entry = root / f"{session.name}-{key[:20]}"
        if not (entry / "meta.json").is_file():
            if extract is None:
                extract = feature_extractor(config, batch_size)
            maps = extract(variables, faces)
            meta = {
                "session": session.name,
                "key": key,
                "weights": digest,
                "shape": list(maps.shape),
            }
            _write_entry(entry, maps, meta)
            computed += 1
        maps = np.load(entry / _FILE, mmap_mode="r")
        if blank is None:
            if extract is None:
                extract = feature_extractor(config, batch_size)
            blank = extract(variables, np.zeros((1,) + faces.shape[1:], faces.dtype))[0]
        arrays = {k: v for k, v in session.arrays.items() if k != "faces"}
        arrays[FEATURES_KEY] = maps
        arrays[BLANK_KEY] = blank
        out.append(PreparedSession(session.name, session.split, arrays))
    log.info(
        "Frozen face features (weights %s): %d of %d sessions computed, the rest cached in %s.",
        digest[:12],
        computed,
        len(sessions),
        root,
    )
    return out


# ------------------------------------------------------- a frozen face stream, per window


def stream_windows(
    model: Any, variables: Mapping[str, Any], batch_size: int = 32
) -> Callable[[Any], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """source -> (states, faceless): a frozen face stream's outputs for every training window.

    `model.freeze_face_stream` keeps the face stream fixed, and with the attention queried by the
    face's own state (`attention_query="face"`) the stream is a function of a window's face
    inputs alone: its states c_t and its face head's outputs (`bimodal.FACE_STREAM_KEYS`) are
    the same at every step of training. They are computed here once, by the model itself
    (inference mode; the stream runs as it does in a train step, from a zero state at the
    window's start), for every window of the training `pipeline.WindowSource` -- states
    {key: [num_windows, L, ...]} in the source's index order -- and for a window with the face
    removed (`augment.drop_face`, the modality dropout's transform) -- faceless {key: [L, ...]},
    the same for every window, since nothing of the window but its face inputs reaches the
    stream. The pipeline then carries them instead of the face inputs and the fusion's step
    runs none of the stream (outputs equal the live frozen stream's:
    tests/data/test_frozen_stream.py).
    """
    from avemo.data import augment
    from avemo.models.bimodal import FACE_STREAM_KEYS

    @jax.jit
    def apply(batch):
        out = model.apply(variables, batch, train=False)
        return {k: out[k].astype(jnp.float32) for k in FACE_STREAM_KEYS if k in out}

    def inputs(window: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v for k, v in window.items() if not k.startswith(augment.FAR_FIELD_PREFIX)}

    def run(windows: list[dict]) -> dict[str, np.ndarray]:
        valid = len(windows)
        windows = windows + [windows[-1]] * (batch_size - valid)  # one compiled shape
        batch = {k: np.stack([w[k] for w in windows]) for k in windows[0]}
        return {k: np.asarray(v)[:valid] for k, v in apply(batch).items()}

    def compute(source: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        n = len(source)
        states: dict[str, np.ndarray] = {}
        for start in range(0, n, batch_size):
            part = run([inputs(source[i]) for i in range(start, min(start + batch_size, n))])
            for k, v in part.items():
                if k not in states:
                    states[k] = np.empty((n,) + v.shape[1:], np.float32)
                states[k][start : start + len(v)] = v
        no_face = augment.drop_face(inputs(source[0]), source.faceless())
        faceless = {k: v[0] for k, v in run([no_face]).items()}
        log.info("Frozen face stream: states of %d training windows computed.", n)
        return states, faceless

    return compute
