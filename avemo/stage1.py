"""Stage-1 face-feature learning (Sec. 6.2, 6.4): a backbone regresses arousal/valence per frame.

prepared sessions -> face crops of steps with `face_present == 1` -> seeded shuffle of
(session, step) pairs (Grain) -> jitted steps on the mesh of `avemo.train` -> held-out R^2 (Eq. 34)
per dimension and loss (RMSE, Eq. 37) -> `workdir/stage1/` (metrics, Orbax weights) and
`workdir/stage1_metrics.json`. `load_into` puts improved-AlexNet weights into the bimodal model's
video branch (`config.model.video_init`, optionally frozen with `config.model.freeze_video`).

CLI: `python -m avemo.stage1 --config configs/stage1.py --workdir W [--config.key=value]`.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from avemo import config as config_lib
from avemo import metrics as metrics_lib
from avemo import objectives, sharding
from avemo import train as train_lib
from avemo.data.pipeline import PreparedSession
from avemo.models.backbones import BACKBONES, build_backbone
from avemo.reporting.writers import MetricWriter

log = logging.getLogger("avemo")

STAGE1_DIR = "stage1"  # under the workdir: metrics, TensorBoard, weights, backbone.json
WEIGHTS_DIR = "weights"  # Orbax StandardCheckpointer tree {"params", "batch_stats"}
META_FILE = "backbone.json"
VIDEO_BRANCH = "alexnet"  # name of the video branch inside `avemo.models.bimodal.BimodalModel`


def defaults() -> ml_collections.ConfigDict:
    """Keys of `config.stage1`."""
    s = ml_collections.ConfigDict()
    s.backbone = "improved_alexnet"  # improved_alexnet | alexnet | vgg | inception
    s.batch_size = 64  # frames per step, global (across processes and devices)
    s.num_steps = 400
    s.learning_rate = 1e-3  # optimizer, clipping and weight decay come from config.train
    s.schedule = "cosine"  # constant | cosine
    s.warmup_steps = 0
    s.loss = "rmse"  # rmse (Eq. 37) | ccc | rmse+ccc, over the frames of a batch
    # Training frames: every k-th step with a face (neighbouring 40 ms frames are near-copies).
    s.frame_stride = 1
    s.eval_splits = ("dev",)
    # Held-out frames evaluated: at most this many, evenly spaced over all of them; 0 = all.
    s.eval_max_frames = 4000
    s.eval_batch_size = 256
    s.log_every_steps = 50
    s.eval_every_steps = 200  # and after the last step
    # Sizes of the comparison backbones (avemo.models.backbones); the improved AlexNet takes
    # config.model.alexnet, and all share its fully connected head.
    s.alexnet = ml_collections.ConfigDict()
    s.alexnet.conv_features = (16, 32, 48, 48, 32)
    s.alexnet.kernel_sizes = (7, 5, 3, 3, 3)
    s.alexnet.conv_strides = (2, 1, 1, 1, 1)
    s.vgg = ml_collections.ConfigDict()
    s.vgg.block_features = (16, 32, 64)
    s.vgg.convs_per_block = 2
    s.inception = ml_collections.ConfigDict()
    s.inception.stem_features = 16
    # Per module: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection).
    s.inception.module_features = ((8, 8, 16, 4, 8, 8), (16, 16, 32, 4, 8, 8))
    s.inception.pool_after = (0, 1)
    return s


def validate(config: ml_collections.ConfigDict) -> None:
    """Stage-1 checks on top of `avemo.config.validate`.

    Raises:
      ConfigError: naming the offending key.
    """
    config_lib.validate(config)
    s = config.stage1
    if s.backbone not in BACKBONES:
        raise config_lib.ConfigError(
            f"config.stage1.backbone={s.backbone!r} is not one of {BACKBONES}"
        )
    if s.schedule not in ("constant", "cosine"):
        raise config_lib.ConfigError(
            f"config.stage1.schedule={s.schedule!r} is not one of ('constant', 'cosine')"
        )
    if s.loss not in ("rmse", "ccc", "rmse+ccc"):
        raise config_lib.ConfigError(
            f"config.stage1.loss={s.loss!r} is not one of ('rmse', 'ccc', 'rmse+ccc')"
        )
    for key in (
        "batch_size",
        "num_steps",
        "frame_stride",
        "eval_batch_size",
        "log_every_steps",
        "eval_every_steps",
    ):
        if s[key] <= 0:
            raise config_lib.ConfigError(f"config.stage1.{key} must be positive, got {s[key]}")
    if s.eval_max_frames < 0:
        raise config_lib.ConfigError("config.stage1.eval_max_frames must be >= 0 (0 = all)")


# ----------------------------------------------------------------------------------------- data


def face_frames(
    sessions: Sequence[PreparedSession], splits: Sequence[str], stride: int = 1
) -> np.ndarray:
    """(session index, step) pairs [N, 2] of labelled steps with a face, every `stride`-th one.

    Session indices refer to `sessions`; only sessions of `splits` with labels are used.
    """
    pairs = []
    for i, session in enumerate(sessions):
        if session.split not in splits or not session.has_labels:
            continue
        steps = np.flatnonzero(np.asarray(session.arrays["face_present"]) > 0.5)[::stride]
        pairs.append(np.stack([np.full_like(steps, i), steps], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.concatenate(pairs).astype(np.int64)


class FrameSource(grain.sources.RandomAccessDataSource):
    """One face crop and its (arousal, valence) label per (session, step) pair."""

    def __init__(self, sessions: Sequence[PreparedSession], pairs: np.ndarray):
        self._faces = [s.arrays["faces"] for s in sessions]
        self._labels = [s.arrays.get("labels") for s in sessions]
        self._pairs = pairs
        self._repr = f"FrameSource({[s.name for s in sessions]}, {len(pairs)} frames)"

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        session, step = self._pairs[index]
        return {
            "faces": np.asarray(self._faces[session][step]),
            "labels": np.asarray(self._labels[session][step], np.float32),
        }

    def __repr__(self) -> str:
        return self._repr


def train_frames_dataset(
    source: FrameSource, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1
) -> grain.IterDataset:
    """Seeded shuffle (reshuffled every epoch), repeated; process p reads block p of each batch."""
    if batch_size % process_count:
        raise config_lib.ConfigError(
            f"config.stage1.batch_size={batch_size} is not divisible by "
            f"the number of processes ({process_count})"
        )
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
    ds = ds.batch(batch_size // process_count, drop_remainder=True)
    return ds[process_index::process_count].to_iter_dataset()


def eval_frames(pairs: np.ndarray, max_frames: int) -> np.ndarray:
    """At most `max_frames` pairs, evenly spaced (all of them for 0)."""
    if max_frames and len(pairs) > max_frames:
        return pairs[np.linspace(0, len(pairs) - 1, max_frames).round().astype(np.int64)]
    return pairs


# ---------------------------------------------------------------------------------------- model


def train_step(
    state: Any, batch: Mapping[str, jax.Array], base_rng: jax.Array, loss_kind: str
) -> tuple[Any, dict[str, jax.Array]]:
    """One optimisation step on a batch of frames: (state, batch, rng) -> (state, metrics)."""
    rng = jax.random.fold_in(base_rng, state.step)

    def loss_fn(params):
        variables = train_lib.model_variables(state, params)
        out, updates = state.apply_fn(
            variables, batch["faces"], train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
        )
        # Frames as one sequence of length B: the per-dimension RMSE of Eq. (37) over the batch.
        mask = jnp.ones(batch["labels"].shape[:1], jnp.float32)[None]
        loss = objectives.main_loss(loss_kind, out["outputs"][None], batch["labels"][None], mask)
        return loss, updates.get("batch_stats", state.batch_stats)

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def predict_step(state: Any, faces: jax.Array) -> jax.Array:
    variables = train_lib.model_variables(state)
    return state.apply_fn(variables, faces, train=False)["outputs"]


def _stage1_train_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with the schedule keys of `config.train` taken from `config.stage1`."""
    derived = copy.deepcopy(config)
    derived.train.learning_rate = config.stage1.learning_rate
    derived.train.schedule = config.stage1.schedule
    derived.train.warmup_steps = config.stage1.warmup_steps
    derived.model.freeze_video = False  # nothing to freeze: the backbone is all there is
    return derived


class Stage1Trainer:
    """Backbone, mesh, shardings and the jitted train / predict functions for stage 1."""

    def __init__(self, config: ml_collections.ConfigDict, example_faces: np.ndarray):
        s = config.stage1
        self.mesh = sharding.make_mesh(config.mesh)
        self.data_size = self.mesh.shape["data"]
        for key in ("batch_size", "eval_batch_size"):
            if s[key] % self.data_size:
                raise config_lib.ConfigError(
                    f"config.stage1.{key}={s[key]} is not divisible by the {self.data_size} "
                    "devices of the mesh's data axis"
                )
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.replicated = sharding.replicated(self.mesh)
        self.model = build_backbone(s.backbone, config, self.mesh.size)
        tx = train_lib.make_optimizer(_stage1_train_config(config), s.num_steps, bimodal=False)
        self.base_rng = jax.random.key(config.seed)
        example = jnp.asarray(example_faces[:1])

        init = train_lib.state_initializer(self.model, tx, example)

        abstract = jax.eval_shape(init, self.base_rng)
        self.state_sharding = jax.tree.map(lambda _: self.replicated, abstract)
        self.init_state = lambda: jax.jit(init, out_shardings=self.state_sharding)(self.base_rng)
        self.train_step = jax.jit(
            functools.partial(train_step, loss_kind=s.loss),
            in_shardings=(self.state_sharding, self.batch_sharding, self.replicated),
            out_shardings=(self.state_sharding, self.replicated),
            donate_argnums=(0,),
        )
        self.predict_step = jax.jit(
            predict_step,
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=self.batch_sharding,
        )

    def to_global(self, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in local.items()
        }

    def predict(self, state: Any, faces: np.ndarray, batch_size: int) -> np.ndarray:
        """Outputs [N, 2] for frames [N, H, W, C] (the last batch zero-padded, then cut)."""
        pi, pc = jax.process_index(), jax.process_count()
        outputs = []
        for start in range(0, len(faces), batch_size):
            batch = faces[start : start + batch_size]
            real = len(batch)
            if real < batch_size:
                batch = np.concatenate(
                    [batch, np.zeros((batch_size - real,) + batch.shape[1:], batch.dtype)]
                )
            local = batch[pi * batch_size // pc : (pi + 1) * batch_size // pc]
            out = self.predict_step(state, self.to_global({"faces": local})["faces"])
            outputs.append(np.asarray(multihost_utils.process_allgather(out, tiled=True))[:real])
        return np.concatenate(outputs) if outputs else np.zeros((0, 2), np.float32)


def evaluate(predictions: np.ndarray, labels: np.ndarray, prefix: str) -> dict[str, float]:
    """R^2 (Eq. 34), CCC (Eq. 35) and RMSE (Eq. 37) per dimension over frames; loss = mean RMSE."""
    out = {}
    for d, dim in enumerate(metrics_lib.DIMENSIONS):
        out[f"{prefix}/r2/{dim}"] = metrics_lib.r2(labels[:, d], predictions[:, d])
        out[f"{prefix}/ccc/{dim}"] = metrics_lib.ccc(predictions[:, d], labels[:, d])
        out[f"{prefix}/rmse/{dim}"] = metrics_lib.rmse(predictions[:, d], labels[:, d])
    for metric in ("r2", "ccc", "rmse"):
        out[f"{prefix}/{metric}/mean"] = float(
            np.mean([out[f"{prefix}/{metric}/{dim}"] for dim in metrics_lib.DIMENSIONS])
        )
    out[f"{prefix}/loss"] = out[f"{prefix}/rmse/mean"]
    return out


# ----------------------------------------------------------------------------------------- loop


def _write_json(path: str, payload: Mapping[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def train_stage1(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config.stage1.backbone` per frame; returns (and writes) the held-out metrics.

    Writes `workdir/stage1/` (metrics.jsonl, TensorBoard, `weights/` = Orbax tree of params and
    batch_stats, `backbone.json`) and `workdir/stage1_metrics.json`.

    Raises:
      ConfigError: for an invalid config or data without training frames.
    """

    validate(config)
    s = config.stage1
    t_begin = time.time()
    workdir = os.path.abspath(workdir)
    out_dir = os.path.join(workdir, STAGE1_DIR)
    is_chief = jax.process_index() == 0
    if is_chief:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2))

    sessions = train_lib.load_sessions(config, workdir)
    train_pairs = face_frames(sessions, ("train",), s.frame_stride)
    held_out = eval_frames(face_frames(sessions, tuple(s.eval_splits)), s.eval_max_frames)
    if not len(train_pairs):
        raise config_lib.ConfigError("no training frames with a face (face_present == 1)")
    t_data = time.time() - t_begin
    source = FrameSource(sessions, train_pairs)
    trainer = Stage1Trainer(config, source[0]["faces"][None])
    data_iter = iter(
        train_frames_dataset(
            source, s.batch_size, config.seed, jax.process_index(), jax.process_count()
        )
    )
    eval_faces = (
        np.stack([sessions[i].arrays["faces"][t] for i, t in held_out]) if len(held_out) else None
    )
    eval_labels = (
        np.stack([sessions[i].arrays["labels"][t] for i, t in held_out]).astype(np.float32)
        if len(held_out)
        else None
    )
    state = trainer.init_state()
    num_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
    log.info(
        "Stage 1: %s with %s parameters, %d training frames, %d held-out frames, %d device(s).",
        s.backbone,
        f"{num_params:,}",
        len(train_pairs),
        len(held_out),
        trainer.data_size,
    )
    writer = MetricWriter(out_dir, enabled=is_chief)
    pending: list[dict[str, jax.Array]] = []
    last_eval: dict[str, float] = {}
    t_train = time.time()
    try:
        for step in range(1, s.num_steps + 1):
            state, step_metrics = trainer.train_step(
                state, trainer.to_global(next(data_iter)), trainer.base_rng
            )
            pending.append(step_metrics)
            last = step == s.num_steps
            if step % s.log_every_steps == 0 or last:
                fetched = jax.device_get(pending)
                pending.clear()
                means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
                if not np.isfinite(means["loss"]):
                    raise FloatingPointError(f"non-finite stage-1 loss at step {step}")
                means["steps_per_second"] = step / max(time.time() - t_train, 1e-9)
                writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
            if eval_faces is not None and (step % s.eval_every_steps == 0 or last):
                predictions = trainer.predict(state, eval_faces, s.eval_batch_size)
                last_eval = evaluate(predictions, eval_labels, "dev")
                writer.write_scalars(step, last_eval)
        train_seconds = time.time() - t_train
        save_weights(out_dir, s.backbone, state.params, state.batch_stats)
    finally:
        writer.close()
    summary = {
        "backbone": s.backbone,
        "step": s.num_steps,
        "num_params": num_params,
        "train_frames": len(train_pairs),
        "eval_frames": len(held_out),
        "data_seconds": t_data,
        "train_seconds": train_seconds,
        "wall_seconds": time.time() - t_begin,
        **last_eval,
    }
    if is_chief:
        _write_json(os.path.join(workdir, "stage1_metrics.json"), summary)
    return summary


# -------------------------------------------------------------------------------- weights I/O


def tree_shapes(tree: Any) -> dict[str, list[int]]:
    """{key path: shape} of every leaf (checked before weights load into another model)."""
    return {
        jax.tree_util.keystr(path): list(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def save_weights(out_dir: str, backbone: str, params: Any, batch_stats: Any) -> None:
    """Orbax tree {"params", "batch_stats"} in `out_dir/weights`, described in backbone.json."""
    tree = {"params": params, "batch_stats": batch_stats}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(out_dir, WEIGHTS_DIR), tree, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()
    if jax.process_index() == 0:
        _write_json(
            os.path.join(out_dir, META_FILE), {"backbone": backbone, "shapes": tree_shapes(tree)}
        )


def _resolve(path: str) -> str:
    """The stage-1 directory for `path` = a stage-1 dir or a workdir holding `stage1/`."""
    path = os.path.abspath(os.path.expanduser(path))
    for candidate in (path, os.path.join(path, STAGE1_DIR)):
        if os.path.exists(os.path.join(candidate, META_FILE)):
            return candidate
    raise config_lib.ConfigError(
        f"config.model.video_init={path!r} holds no stage-1 weights (no {META_FILE} there or in "
        f"{STAGE1_DIR}/); run `python -m avemo.stage1` first"
    )


def load_into(
    state_params: Mapping[str, Any], batch_stats: Mapping[str, Any], path: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Replaces the bimodal model's video branch (`alexnet`) by the stage-1 weights at `path`.

    The stage-1 backbone must be the improved AlexNet with the same sizes (`config.model.alexnet`
    and the face crop size, which fixes the first FC kernel). Arrays are restored onto the
    shardings of the arrays they replace. Returns new (params, batch_stats); others untouched.

    Raises:
      ConfigError: for a missing directory, another backbone or different shapes.
    """
    directory = _resolve(path)
    with open(os.path.join(directory, META_FILE), encoding="utf-8") as f:
        meta = json.load(f)
    if meta["backbone"] != "improved_alexnet":
        raise config_lib.ConfigError(
            f"stage-1 weights in {directory} are a {meta['backbone']!r} backbone; the bimodal "
            "model's video branch is the improved AlexNet (stage1.backbone='improved_alexnet')"
        )
    if VIDEO_BRANCH not in state_params:
        raise config_lib.ConfigError(
            "config.model.video_init is set but the model has no video "
            "branch (config.model.mode='audio')"
        )
    target = {
        "params": state_params[VIDEO_BRANCH],
        "batch_stats": batch_stats.get(VIDEO_BRANCH, {}) if batch_stats else {},
    }
    expected, stored = tree_shapes(target), meta["shapes"]
    if expected != stored:
        diff = sorted(k for k in set(expected) | set(stored) if expected.get(k) != stored.get(k))
        key = diff[0]
        raise config_lib.ConfigError(
            f"stage-1 weights in {directory} do not fit the video branch: {key} is "
            f"{stored.get(key)} there and {expected.get(key)} here (config.model.alexnet sizes "
            "and face size must match stage 1)"
        )
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target
    )
    checkpointer = ocp.StandardCheckpointer()
    restored = checkpointer.restore(os.path.join(directory, WEIGHTS_DIR), abstract)
    checkpointer.close()
    params = {**state_params, VIDEO_BRANCH: restored["params"]}
    stats = dict(batch_stats or {})
    if restored["batch_stats"]:
        stats[VIDEO_BRANCH] = restored["batch_stats"]
    return params, stats


# ------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m avemo.stage1 --config configs/stage1.py --workdir W`; errors: one line, exit 2."""
    from absl import flags
    from ml_collections import config_flags

    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Stage-1 config file (configs/stage1*.py).",
        flag_values=flag_values,
        lock_config=True,
    )
    flags.DEFINE_string(
        "workdir", None, "Directory for stage-1 weights and metrics.", flag_values=flag_values
    )
    flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)
    try:
        flag_values(list(sys.argv if argv is None else argv))
        config = flag_values.config
        config.keys()
    except Exception as err:  # noqa: BLE001 -- flag / config-file errors are one user error
        print(f"avemo.stage1: error: {str(err).strip().splitlines()[-1]}", file=sys.stderr)
        sys.exit(2)
    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1])  # Grain reads absl flags
    # avemo's progress at INFO, libraries (Orbax logs through absl) at WARNING, as avemo.main.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", force=True
    )
    logging.getLogger("avemo").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        summary = train_stage1(config, flag_values.workdir)
    except config_lib.ConfigError as err:
        print(f"avemo.stage1: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({k: v for k, v in summary.items() if "/r2/" in k or "seconds" in k}, indent=2))


if __name__ == "__main__":
    main()
