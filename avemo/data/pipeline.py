"""Grain pipeline: prepared sessions -> training windows / whole-session evaluation batches.

Training: every window of L steps (hop H) of every training session -> shuffle(seed), reshuffled
each epoch -> this process's shard -> batch. The iterator state is checkpointed with the model so
that a resumed run sees exactly the same batches. Evaluation: each session is cut into windows of
`eval.window_steps` that overlap by `eval.context_steps`, so every prediction has at least that
much history, and stitched back into one prediction per step.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from avemo.data.shuffle import EpochShuffleMapDataset

# Per-step arrays a window carries (spectrogram patches are cut from `logmel` on the fly);
# `face_features`: cached maps of a frozen face branch (avemo.data.frozen), in place of faces.
STEP_KEYS = ("faces", "face_features", "face_present", "audio_features", "speech_energy", "labels")
_VOICE_KEYS = ("audio_features", "speech_energy", "spectrogram")  # a window's voice inputs


@dataclasses.dataclass(frozen=True)
class PreparedSession:
    """Model-ready arrays of one session (audio features already z-normalised)."""

    name: str
    split: str
    arrays: Mapping[str, np.ndarray]

    @property
    def num_steps(self) -> int:
        return int(self.arrays["face_present"].shape[0])

    @property
    def has_labels(self) -> bool:
        return "labels" in self.arrays


def delay_targets(session: PreparedSession, steps: int) -> PreparedSession:
    """A training session whose step t carries the label of step t + `steps` (the raters' delay
    handled at the source, `config.data.label_delay_steps`): the per-step inputs end `steps`
    steps before the labels do, so every target has its inputs and nothing is padded."""
    if steps <= 0 or not session.has_labels:
        return session
    n = session.num_steps
    if steps >= n:
        raise ValueError(
            f"session {session.name}: {n} steps cannot be trained with a label delay of {steps}"
        )
    arrays = {k: v[: n - steps] if k in STEP_KEYS else v for k, v in session.arrays.items()}
    arrays["labels"] = session.arrays["labels"][steps:]
    return dataclasses.replace(session, arrays=arrays)


def onto_label_clock(predictions: np.ndarray, steps: int) -> np.ndarray:
    """Predictions [T, ...] made at step t for the label of step t + `steps` (a model trained on
    `delay_targets`), placed at t + `steps`; the first `steps` steps hold the first prediction
    (nothing earlier predicts them)."""
    if steps <= 0 or len(predictions) == 0:
        return predictions
    keep = max(len(predictions) - steps, 0)  # predictions that still land inside the session
    head = np.repeat(predictions[:1], len(predictions) - keep, axis=0)
    return np.concatenate([head, predictions[:keep]])


def window_starts(num_steps: int, window: int, hop: int) -> list[int]:
    """Window starts covering [0, num_steps): every `hop`, plus one flush with the end."""
    if num_steps <= window:
        return [0]
    starts = list(range(0, num_steps - window + 1, hop))
    if starts[-1] != num_steps - window:
        starts.append(num_steps - window)
    return starts


def _cut(
    session: PreparedSession,
    start: int,
    window: int,
    spectrogram: Any | None,
    step_seconds: float = 0.04,
    face_stride: int = 1,
    strided_keys: tuple[str, ...] = ("face_features",),
) -> dict:
    """Arrays of steps [start, start + window), zero-padded past the end with mask 0.

    `step_seconds` (`config.data.step_seconds`) places the spectrogram patches on the label grid.
    `face_stride` (`config.model.video_frame_stride`): the `strided_keys` -- cached frozen maps
    (`face_features`), and in training windows the face crops (`faces`) too -- only of the steps
    start, start + s, ... -- the only ones the model reads (it holds each for s steps) -- so
    ceil(window / s) of them: s times fewer bytes to cut, batch and move (the model takes either
    form, `BimodalModel._face_maps`).
    """
    stop = min(start + window, session.num_steps)
    valid = stop - start
    out = {}
    for key in STEP_KEYS:
        if key not in session.arrays:
            continue
        stride, length = 1, window
        if key in strided_keys and face_stride > 1:
            stride, length = face_stride, -(-window // face_stride)
        part = np.asarray(session.arrays[key][start:stop:stride])
        if len(part) < length:
            pad = np.zeros((length - len(part),) + part.shape[1:], part.dtype)
            part = np.concatenate([part, pad])
        out[key] = part
    mask = np.zeros(window, np.float32)
    mask[:valid] = 1.0
    out["mask"] = mask
    if spectrogram is not None:
        from avemo.audio import spectrogram as spectrogram_lib  # the audio front end's cutter

        steps = np.minimum(np.arange(start, start + window), session.num_steps - 1)
        out["spectrogram"] = spectrogram_lib.patches(
            session.arrays["logmel"], steps, spectrogram, step_seconds
        ).astype(np.float32)
    return out


class WindowSource(grain.sources.RandomAccessDataSource):
    """Random access over (session, window start) pairs; a deterministic repr for Grain state."""

    def __init__(
        self,
        sessions: Sequence[PreparedSession],
        window: int,
        hop: int,
        spectrogram_cfg: Any | None = None,
        step_seconds: float = 0.04,
        far_field: Mapping[str, Mapping[str, np.ndarray]] | None = None,
        face_stride: int = 1,
    ):
        """`far_field`: {session: audio inputs heard from afar} (`avemo.data.augment`), cut beside
        the clean ones under `augment.FAR_FIELD_PREFIX`. `face_stride`: see `_cut`."""
        self._sessions = list(sessions)
        self._face_stride = face_stride
        self._face_stream: dict[str, np.ndarray] = {}
        self._far_field = dict(far_field or {})
        self._window = window
        self._spectrogram_cfg = spectrogram_cfg
        self._step_seconds = step_seconds
        self._index = [
            (i, s)
            for i, session in enumerate(self._sessions)
            for s in window_starts(session.num_steps, window, hop)
        ]
        self._repr = (
            f"WindowSource(sessions={[s.name for s in self._sessions]}, window={window},"
            f" hop={hop}, n={len(self._index)}"
            + (f", far_field={sorted(self._far_field)}" if self._far_field else "")
            + ")"
        )

    def __len__(self) -> int:
        return len(self._index)

    def faceless(self) -> dict[str, np.ndarray]:
        """What stands for "no face" in this source's windows where zeros would not: the frozen
        CNN's map of a blank crop for cached maps (`avemo.data.frozen.BLANK_KEY`), else nothing
        (a face-removed window's crops are zeros, as the protocol's)."""
        from avemo.data import frozen

        arrays = self._sessions[0].arrays
        return {frozen.FEATURES_KEY: arrays[frozen.BLANK_KEY]} if frozen.BLANK_KEY in arrays else {}

    def set_face_stream(self, states: Mapping[str, np.ndarray]) -> None:
        """A frozen face stream's states {key: [len(self), L, ...]} in index order
        (`avemo.data.frozen.stream_windows`): windows then carry them instead of their face
        inputs (crops or cached maps), which nothing reads any more."""
        if any(len(v) != len(self) for v in states.values()):
            raise ValueError(f"face stream states for {len(self)} windows expected")
        self._face_stream = dict(states)
        self._repr = self._repr[:-1] + f", face_stream={sorted(states)})"
        face_inputs = ("faces", "face_features")
        self._sessions = [
            dataclasses.replace(
                s, arrays={k: v for k, v in s.arrays.items() if k not in face_inputs}
            )
            for s in self._sessions
        ]

    def __getitem__(self, index: int) -> dict:
        session_index, start = self._index[index]
        session = self._sessions[session_index]
        out = _cut(
            session,
            start,
            self._window,
            self._spectrogram_cfg,
            self._step_seconds,
            self._face_stride,
            ("faces", "face_features"),  # training windows: the crops the CNN sees, only
        )
        out.update({k: v[index] for k, v in self._face_stream.items()})
        if session.name in self._far_field:
            from avemo.data.augment import FAR_FIELD_PREFIX

            arrays = {"face_present": session.arrays["face_present"]}  # gives the step count
            arrays.update(self._far_field[session.name])
            far = PreparedSession(session.name, session.split, arrays)
            cut = _cut(far, start, self._window, self._spectrogram_cfg, self._step_seconds)
            out.update({FAR_FIELD_PREFIX + k: cut[k] for k in _VOICE_KEYS if k in cut})
        return out

    def __repr__(self) -> str:
        return self._repr


def train_dataset(
    sessions: Sequence[PreparedSession],
    config: ml_collections.ConfigDict,
    process_index: int = 0,
    process_count: int = 1,
    read_options: grain.ReadOptions | None = None,
    silence: Mapping[str, np.ndarray] | None = None,
    far_field: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    face_stream: Callable[[WindowSource], tuple[dict, dict]] | None = None,
) -> grain.IterDataset:
    """Shuffled, repeated, process-sharded, batched training windows.

    `read_options`: Grain's reading threads and prefetch buffer (None: `train.pipeline_threads`
    and `train.prefetch_batches`); the data order does not depend on them.
    `silence`: the inputs of a silent window, for modality dropout (`avemo.data.augment`).
    `far_field`: the training sessions' far-field audio inputs, for far-field augmentation.
    `face_stream`: source -> (states, faceless) of a frozen face stream
    (`avemo.data.frozen.stream_windows`): the windows carry the states, and a window whose face
    modality dropout removes carries the faceless ones (`augment.drop_face`).
    """
    train = [
        delay_targets(s, config.data.label_delay_steps)
        for s in sessions
        if s.split == "train" and s.has_labels
    ]
    if not train:
        raise ValueError("no labelled training sessions")
    if config.train.batch_size % process_count:
        raise ValueError(
            f"config.train.batch_size={config.train.batch_size} is not divisible by "
            f"the number of processes ({process_count})"
        )
    source = WindowSource(
        train,
        config.train.window_steps,
        config.train.window_hop_steps,
        config.audio if config.model.audio_cnn.enabled else None,
        config.data.step_seconds,
        far_field if config.train.far_field_augment > 0 else None,
        config.model.video_frame_stride,
    )
    faceless = source.faceless()
    if face_stream is not None:
        states, stream_faceless = face_stream(source)
        source.set_face_stream(states)
        faceless.update(stream_faceless)
    # Grain's shuffle order, computed an epoch at a time (avemo/data/shuffle.py)
    ds = EpochShuffleMapDataset(grain.MapDataset.source(source), config.seed).repeat()
    from avemo.data import augment  # issue 9: modality dropout (train.modality_dropout)

    ds = augment.apply(ds, config, silence, faceless)
    # Process p reads the p-th contiguous block of every global batch, which is where the mesh
    # puts its rows: the global batch (content and order, hence dropout masks) is the same for
    # any number of processes.
    ds = ds.batch(config.train.batch_size // process_count, drop_remainder=True)
    ds = ds[process_index::process_count]
    # A bounded read-ahead: `prefetch_batches` batches cut by `pipeline_threads` threads while
    # the device runs the step (0 threads: cut on demand in the training loop's thread).
    options = read_options or grain.ReadOptions(
        num_threads=config.train.pipeline_threads,
        prefetch_buffer_size=config.train.prefetch_batches,
    )
    return ds.to_iter_dataset(options)


def num_train_windows(
    sessions: Sequence[PreparedSession], config: ml_collections.ConfigDict
) -> int:
    """Windows in one epoch (for converting epochs into steps)."""
    return sum(
        len(window_starts(s.num_steps, config.train.window_steps, config.train.window_hop_steps))
        for s in (
            delay_targets(s, config.data.label_delay_steps)  # the sessions `train_dataset` cuts
            for s in sessions
            if s.split == "train" and s.has_labels
        )
    )


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """Windows of whole sessions and where each window's predictions go back."""

    # Host batches of `eval.batch_size` windows, last one padded: a list, or `WindowBatches`,
    # which cuts each batch when it is read.
    batches: Sequence[dict]
    # (session name, window start, first kept offset, number kept) per window, in batch order.
    placements: list[tuple[str, int, int, int]]
    num_steps: dict[str, int]
    # `config.data.label_delay_steps`: `stitch` moves the outputs this many steps later.
    label_delay: int = 0


class WindowBatches(Sequence):
    """The batches of an eval plan, each cut from the sessions when it is read.

    Holding every window of a corpus at once costs its whole size again (and more, windows
    overlap by `eval.context_steps`): 23 GB for the 9 dev sessions of 300 s of a RECOLA-sized
    corpus at the paper's 224x224x3 faces. Cut on demand, an evaluation holds one batch, and the
    (memory-mapped) faces are read window by window.
    """

    def __init__(
        self,
        sessions: Sequence[PreparedSession],
        placements: Sequence[tuple[str, int, int, int]],
        window: int,
        size: int,
        spectrogram: Any | None,
        step_seconds: float,
        face_stride: int = 1,
    ):
        self._sessions = {s.name: s for s in sessions}
        self._placements = list(placements)
        self._window, self._size = window, size
        self._spectrogram, self._step_seconds = spectrogram, step_seconds
        self._face_stride = face_stride

    def __len__(self) -> int:
        return -(-len(self._placements) // self._size)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        chunk = [
            _cut(
                self._sessions[name],
                start,
                self._window,
                self._spectrogram,
                self._step_seconds,
                self._face_stride,
            )
            for name, start, _, _ in self._placements[i * self._size : (i + 1) * self._size]
        ]
        while len(chunk) < self._size:  # padding windows are fully masked
            chunk.append(jax.tree.map(np.zeros_like, chunk[0]))
        return {k: np.stack([w[k] for w in chunk]) for k in chunk[0]}


def eval_plan(sessions: Sequence[PreparedSession], config: ml_collections.ConfigDict) -> EvalPlan:
    """Cuts sessions into overlapping windows so each prediction has `context_steps` history.

    The batches are cut when read (`WindowBatches`), one at a time.
    """
    window, context = config.eval.window_steps, config.eval.context_steps
    placements: list[tuple[str, int, int, int]] = []
    for session in sessions:
        for j, start in enumerate(window_starts(session.num_steps, window, window - context)):
            previous_end = (
                0 if j == 0 else placements[-1][1] + placements[-1][2] + placements[-1][3]
            )
            keep_from = max(previous_end - start, 0)
            kept = min(start + window, session.num_steps) - (start + keep_from)
            placements.append((session.name, start, keep_from, kept))
    batches = WindowBatches(
        sessions,
        placements,
        window,
        config.eval.batch_size,
        config.audio if config.model.audio_cnn.enabled else None,
        config.data.step_seconds,
        config.model.video_frame_stride,
    )
    return EvalPlan(
        batches,
        placements,
        {s.name: s.num_steps for s in sessions},
        config.data.label_delay_steps,
    )


# What evaluation keeps of the model's outputs: the fused (A, V), the gate beta (and with
# `model.gate_per_output` each dimension's gate) and, with `model.modality_heads`, each stream's
# own head; the predictions among them (PREDICTION_KEYS) are for the labels' clock.
PREDICTION_KEYS = ("outputs", "audio_outputs", "video_outputs")
EVAL_KEYS = (*PREDICTION_KEYS, "audio_gate", "audio_gates")


def stitch(plan: EvalPlan, outputs: Sequence[Mapping[str, np.ndarray]]) -> dict[str, dict]:
    """Per-session arrays [T, ...] from per-batch model outputs [B, L, ...]."""
    flat = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    result: dict[str, dict] = {}
    for i, (name, start, keep_from, kept) in enumerate(plan.placements):
        session = result.setdefault(name, {})
        for key, values in flat.items():
            if key not in session:
                session[key] = np.zeros((plan.num_steps[name],) + values.shape[2:], values.dtype)
            session[key][start + keep_from : start + keep_from + kept] = values[
                i, keep_from : keep_from + kept
            ]
    if plan.label_delay:  # predictions for t + d, made at t -> the labels' clock
        for session in result.values():
            for key in PREDICTION_KEYS:
                if key in session:
                    session[key] = onto_label_clock(session[key], plan.label_delay)
    return result


def batches_to_global(batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict:
    """This process's part of a batch -> global jax.Arrays sharded over the mesh's data axis."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


class DevicePrefetch:
    """Training batches put on the device `size` steps ahead by a background thread.

    `put` (e.g. `Trainer.to_global`) runs in the thread, so a batch's host-to-device copy
    overlaps the step that runs before it (flax's `prefetch_to_device`, for Grain iterators).
    Exact resume: `get_state` is the wrapped iterator's state after the last batch handed out,
    not after the batches read ahead, and `set_state` (before the first batch, as a restore
    does) sets the wrapped iterator's. The checkpointed state is the same JSON the bare Grain
    iterator writes, so checkpoints of either kind restore into the other.
    """

    def __init__(self, iterator, put, size: int):
        if size < 1:
            raise ValueError(f"DevicePrefetch needs size >= 1 (got {size})")
        self._iterator, self._put, self._size = iterator, put, size
        self._state = iterator.get_state()
        self._queue = None
        self._thread = None
        self._stop = threading.Event()

    def __iter__(self):
        return self

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                batch = next(self._iterator)
                item = ("batch", self._put(batch), self._iterator.get_state())
            except BaseException as err:  # noqa: BLE001 -- raised again in the consumer
                item = ("error", err, None)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[0] == "error":
                return

    def __next__(self):
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self._size)
            self._stop.clear()
            self._thread = threading.Thread(target=self._work, name="device-prefetch", daemon=True)
            self._thread.start()
        kind, value, state = self._queue.get()
        if kind == "error":
            self.close()
            raise value
        self._state = state
        return value

    def close(self) -> None:
        """Stops the thread; the batches read ahead are dropped (the state is unaffected)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._state is not None:  # the wrapped iterator back to the last batch handed out
            self._iterator.set_state(self._state)

    # Grain's checkpoint handler treats an iterator that is not its own DatasetIterator as a
    # legacy one: bytes in and out, then start_prefetch() after a restore.
    def get_state(self) -> bytes:
        return json.dumps(self._state, indent=4).encode()

    def set_state(self, state) -> None:
        self.close()
        self._state = json.loads(state) if isinstance(state, bytes | str) else state
        self._iterator.set_state(self._state)

    def start_prefetch(self) -> None:
        """Nothing to do: the thread starts at the first batch asked for."""


def iterate_global(dataset_iter: Iterator[dict], sharding: jax.sharding.Sharding) -> Iterator[dict]:
    for batch in dataset_iter:
        yield batches_to_global(batch, sharding)
