"""A trained model back from its workdir, and its predictions on whole sessions.

workdir (config.json, normalizer.npz, checkpoints/) -> `TrainedModel` -> per-step arousal,
valence and audio gate for `PreparedSession`s (evaluation) or for raw recordings (prediction,
through the same front ends and the saved z-normalisation).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from avemo import checkpointing, train
from avemo import config as config_lib
from avemo.data import pipeline
from avemo.data.prepare import NORMALIZER_FILE

log = logging.getLogger("avemo")


class NoModelError(FileNotFoundError):
    """The workdir holds no trained model (no config.json or no checkpoint)."""


@dataclasses.dataclass
class TrainedModel:
    config: ml_collections.ConfigDict
    trainer: train.Trainer
    state: train.TrainState
    step: int
    workdir: str

    def normalizer(self):
        from avemo.audio import normalize

        return normalize.load(os.path.join(self.workdir, NORMALIZER_FILE))

    def predict(self, sessions: Sequence[pipeline.PreparedSession]) -> dict[str, dict]:
        """{session: {"outputs": [T, 2], "audio_gate": [T] (fusion only)}}."""
        plan = pipeline.eval_plan(sessions, self.config)
        return self.trainer.predict(self.state, plan)

    def predict_streaming(
        self,
        session: pipeline.PreparedSession,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """`predict` of one session, one batch of windows at a time (bounded memory).

        The same overlapping windows and stitching as evaluation (`pipeline.eval_plan`: windows
        of `eval.window_steps` overlapping by `eval.context_steps`, each step predicted by the
        first window that gives it that much history), but only one batch of
        `eval.batch_size` windows exists at a time, and the session's arrays are only sliced
        (a `StepFile` of faces is read window by window). `progress(steps done)` after each batch.
        """
        config = self.config
        window, context = config.eval.window_steps, config.eval.context_steps
        size = config.eval.batch_size
        spectrogram = config.audio if config.model.audio_cnn.enabled else None
        steps = session.num_steps
        placements: list[tuple[str, int, int, int]] = []
        for j, start in enumerate(pipeline.window_starts(steps, window, window - context)):
            previous_end = 0 if j == 0 else sum(placements[-1][1:])
            keep_from = max(previous_end - start, 0)
            kept = min(start + window, steps) - (start + keep_from)
            placements.append((session.name, start, keep_from, kept))
        result: dict[str, np.ndarray] = {}
        for i in range(0, len(placements), size):
            chunk = placements[i : i + size]
            # pipeline._cut is the evaluation's own window cutter (zero padding, mask, patches).
            windows = [
                pipeline._cut(
                    session,
                    p[1],
                    window,
                    spectrogram,
                    config.data.step_seconds,
                    config.model.video_frame_stride,
                )
                for p in chunk
            ]
            while len(windows) < size:  # padding windows are fully masked
                windows.append({k: np.zeros_like(v) for k, v in windows[0].items()})
            batch = {k: np.stack([w[k] for w in windows]) for k in windows[0]}
            plan = pipeline.EvalPlan([batch], chunk, {session.name: steps})
            out = self.trainer.predict(self.state, plan)[session.name]
            for _, start, keep_from, kept in chunk:
                placed = slice(start + keep_from, start + keep_from + kept)
                for key, values in out.items():
                    if key not in result:
                        result[key] = np.zeros((steps,) + values.shape[1:], values.dtype)
                    result[key][placed] = values[placed]
            if progress is not None:
                progress(sum(chunk[-1][1:]))
        for key in pipeline.PREDICTION_KEYS:  # as `pipeline.stitch` does for a whole plan
            if key in result:
                result[key] = pipeline.onto_label_clock(result[key], config.data.label_delay_steps)
        return result


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise NoModelError(f"{workdir}: no config.json -- not an avemo workdir")
    config = config_lib.base_config()
    loaded = json.loads(pathlib.Path(path).read_text())
    defaulted = _overlay(config, loaded, "")
    if defaulted:
        log.warning(
            "%s predates config key(s) %s; using their defaults.", path, ", ".join(defaulted)
        )
    return config_lib.validate(config)


def _overlay(config: ml_collections.ConfigDict, saved: dict, prefix: str) -> list[str]:
    """Writes saved values into the schema (tuples stay tuples); returns keys left at default."""
    defaulted = []
    for key in config.keys():
        if key not in saved:
            defaulted.append(prefix + key)
            continue
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            defaulted += _overlay(value, saved[key], f"{prefix}{key}.")
        elif isinstance(value, tuple) and isinstance(saved[key], list):
            config[key] = tuple(tuple(v) if isinstance(v, list) else v for v in saved[key])
        else:
            config[key] = saved[key]
    unknown = sorted(set(saved) - set(config.keys()))
    if unknown:
        raise config_lib.ConfigError(
            f"saved config has unknown key(s): {', '.join(prefix + k for k in unknown)}"
        )
    return defaulted


def example_from_config(
    config: ml_collections.ConfigDict, feature_dim: int
) -> dict[str, np.ndarray]:
    """A one-window batch of zeros with the shapes the model was built for."""
    length, size = config.eval.window_steps, config.video.crop_size
    channels = 1 if config.video.color_mode == "gray" else 3
    if config.data.corpus == "memory":
        size, channels = config.data.memory.face_size, 1
    batch = {
        "faces": np.zeros((1, length, size, size, channels), np.uint8),
        "face_present": np.zeros((1, length), np.float32),
        "audio_features": np.zeros((1, length, feature_dim), np.float32),
        "speech_energy": np.zeros((1, length), np.float32),
        "labels": np.zeros((1, length, 2), np.float32),
        "mask": np.zeros((1, length), np.float32),
    }
    if config.model.audio_cnn.enabled:
        from avemo.audio import spectrogram

        batch["spectrogram"] = np.zeros(
            (1, length) + tuple(spectrogram.patch_shape(config.audio)), np.float32
        )
    return batch


def feature_dim(workdir: str, config: ml_collections.ConfigDict) -> int:
    """The audio feature width the model of `workdir` was built for.

    Raises:
      NoModelError: a file corpus's workdir without its normalisation statistics.
    """
    if config.data.corpus == "memory":
        return int(config.data.memory.feature_dim)
    normalizer_path = os.path.join(workdir, NORMALIZER_FILE)
    if not os.path.exists(normalizer_path):
        raise NoModelError(f"{workdir}: no {NORMALIZER_FILE} (audio normalisation statistics)")
    from avemo.audio import normalize

    return int(normalize.load(normalizer_path).mean.shape[0])


def checkpoint_step(workdir: str, config: ml_collections.ConfigDict, which: str = "best") -> int:
    """The step `load` restores: the best by dev ("best", else the latest) or the latest.

    Raises:
      NoModelError: no checkpoint in `workdir`.
    """
    ckpt = checkpointing.Checkpointer(workdir, f"dev/{config.checkpoint.best_metric}")
    try:
        step = ckpt.best_step() if which == "best" else None
        step = step if step is not None else ckpt.latest_step()
        if step is None:
            raise NoModelError(f"{workdir}: no checkpoint in {ckpt.directory}")
        return step
    finally:
        ckpt.close()


def restore_state(workdir: str, config: ml_collections.ConfigDict, step: int, target) -> Any:
    """The TrainState of `workdir` at `step`, onto `target` (abstract state with shardings).

    Inference needs the parameters and batch statistics only: a checkpoint whose optimizer state
    has another structure (written by an earlier avemo whose optimizer kept state for the face
    CNN's stage-1 head) is restored without it (a fresh optimizer state fills the slot), with a
    warning."""
    ckpt = checkpointing.Checkpointer(workdir, f"dev/{config.checkpoint.best_metric}")
    try:
        try:
            state, _ = ckpt.restore(step, target, None)
        except ValueError as err:
            saved = ckpt.restore_untyped(step)
            model_part = {"params": target.params, "batch_stats": target.batch_stats}
            try:
                placed = jax.tree.map(
                    lambda x, t: jax.device_put(np.asarray(x, t.dtype), t.sharding),
                    {k: saved.get(k) for k in model_part},
                    model_part,
                )
            except ValueError:
                raise err from None  # the model itself differs: the original error says how
            log.warning(
                "%s: the checkpoint's optimizer state does not match this avemo's optimizer; "
                "restored the parameters only (enough for inference)",
                workdir,
            )
            fresh = target.tx.init(placed["params"])  # never used; fills the state's slot
            opt_state = jax.tree.map(
                lambda x, t: jax.device_put(x, t.sharding), fresh, target.opt_state
            )
            state = target.replace(
                step=int(np.asarray(saved["step"])), opt_state=opt_state, **placed
            )
    finally:
        ckpt.close()
    return state


def load(workdir: str, which: str = "best") -> TrainedModel:
    """The trained model of `workdir`: its best-by-dev checkpoint ("best") or the latest.

    Raises:
      NoModelError: no config or no checkpoint in `workdir`.
    """
    workdir = os.path.abspath(workdir)
    config = load_config(workdir)
    dim = feature_dim(workdir, config)
    step = checkpoint_step(workdir, config, which)
    trainer = train.Trainer(config, example_from_config(config, dim), 1)
    state = restore_state(workdir, config, step, trainer.restore_target())
    return TrainedModel(config, trainer, state, step, workdir)
