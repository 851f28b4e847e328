"""The training loop: data -> jitted steps on a device mesh -> evaluation -> Orbax checkpoints.

`train_and_evaluate(config, workdir)` is the one entry point (main.py and tests call it). State is
initialised through `jax.eval_shape` -> shardings -> `jax.jit(init)`; the train step is one pure,
jitted function with in/out shardings (batch over the `data` axis, parameters replicated), the
state donated, and `rng = fold_in(rng, step)`. A workdir holding a checkpoint resumes exactly
(state and data order); SIGTERM finishes the step, saves and exits cleanly.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.experimental import multihost_utils

from avemo import checkpointing, hostmem, objectives, sharding
from avemo import config as config_lib
from avemo import metrics as metrics_lib
from avemo.data import pipeline
from avemo.models.bimodal import (
    FROZEN_FACE_STREAM,
    BimodalModel,
    build_model,
    face_chunk_frames,
    face_feature_map,
)
from avemo.reporting.writers import MetricWriter
from avemo.warm_start import FACE_STREAM_MAP

log = logging.getLogger("avemo")


# The one split whose metrics choose checkpoints (and on which post-processing is fitted).
SELECTION_SPLIT = "dev"


class TrainState(train_state.TrainState):
    batch_stats: Any = None


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


# ----------------------------------------------------------------------------------------- data


def load_sessions(
    config: ml_collections.ConfigDict, workdir: str
) -> list[pipeline.PreparedSession]:
    """Model-ready sessions for `config.data.corpus` ("memory" needs no files)."""
    if config.data.corpus == "memory":
        from avemo.data import memory

        return memory.make_sessions(config.data.memory)
    from avemo.data import prepare  # front ends + cache; imported only when files are needed

    return prepare.prepared_sessions(config, workdir)


def num_train_steps(config: ml_collections.ConfigDict, windows_per_epoch: int) -> int:
    """The one place where epochs become steps."""
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    return max(1, int(config.train.num_epochs * windows_per_epoch // config.train.batch_size))


def example_batch(
    sessions: Sequence[pipeline.PreparedSession], config: ml_collections.ConfigDict, batch_size: int
) -> dict[str, np.ndarray]:
    """A batch of the training shapes (zeros), for initialisation and benchmarks."""
    source = pipeline.WindowSource(
        [s for s in sessions if s.split == "train"][:1],
        config.train.window_steps,
        config.train.window_hop_steps,
        config.audio if config.model.audio_cnn.enabled else None,
        config.data.step_seconds,
        face_stride=config.model.video_frame_stride,
    )
    item = source[0]
    return {k: np.zeros((batch_size,) + v.shape, v.dtype) for k, v in item.items()}


# ---------------------------------------------------------------------------------------- model


def learning_rate(
    config: ml_collections.ConfigDict,
    total_steps: int,
    peak: float,
    bimodal: bool = True,
    face_tower: bool = False,
) -> optax.ScalarOrSchedule:
    """The learning rate of `config.train` with peak `peak`, per step of a run of `total_steps`
    (`face_tower`: the rate of the warm-started face tower's group).

    The schedule's length and the step the run starts it at: a fusion after a face stage with
    `train.stage_schedule = "continued"` runs steps face_stage_steps ... of one schedule over
    both (its stage, `warm_start.stage_config`, the first face_stage_steps of the same one);
    with "face_continued" only the face tower does, the layers the stage did not train starting
    a schedule of their own; `train.schedule_start` / `schedule_steps` set them by hand (with
    "face_continued", schedule_start is the face tower's start)."""
    t = config.train
    start = t.schedule_start
    face_only = bimodal and t.stage_schedule == "face_continued"
    if face_only and not face_tower:
        start = 0  # the layers the stage did not train: their own schedule
    elif bimodal and t.stage_schedule in ("continued", "face_continued") and t.face_stage_steps:
        start = t.face_stage_steps
    length = (t.schedule_steps if not face_only else 0) or start + total_steps
    if t.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(
            0.0, peak, t.warmup_steps, max(length, t.warmup_steps + 1)
        )
    elif t.warmup_steps:
        lr = optax.linear_schedule(0.0, peak, t.warmup_steps)
    else:
        return peak
    return (lambda count: lr(count + start)) if start else lr


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int, bimodal: bool = True
) -> optax.GradientTransformation:
    """The optimizer of `config.train`. `bimodal` (the fusion/audio/video model, not stage 1):
    the face CNN's FC layers and output, which only stage 1 trains, get zero updates and no
    optimizer state (their gradient in the bimodal model is exactly zero; for the paper's model
    they are 308 M of its 327 M parameters, whose Adam moments would cost 2.5 GB and a pass over
    3.7 GB per step). A frozen face branch (`model.freeze_video`) gets zero updates throughout."""
    t = config.train

    def optimizer(scale: float, clip: bool, face: bool = False) -> optax.GradientTransformation:
        lr = learning_rate(config, total_steps, t.learning_rate * scale, bimodal, face)
        if t.optimizer == "adam":
            opt = optax.adamw(lr, weight_decay=t.weight_decay) if t.weight_decay else optax.adam(lr)
        else:
            opt = optax.chain(
                optax.add_decayed_weights(t.weight_decay) if t.weight_decay else optax.identity(),
                optax.sgd(lr, momentum=t.momentum),
            )
        if clip and t.grad_clip_norm > 0:
            opt = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm), opt)
        return opt

    freeze_branch = config.model.freeze_video  # stage-1 video branch kept fixed
    frozen_modules = set(_frozen_modules(config))
    unused_head = bimodal and config.model.mode in ("fusion", "video")
    # The warm-started face tower at its own rate (train.face_init_lr_scale).
    face_scale = t.face_init_lr_scale if bimodal else 1.0
    # Its own schedule too with train.stage_schedule = "face_continued".
    # (Not in a run with no face stage to continue: there both groups' schedules are the same.)
    continues = t.face_stage_steps or (config.model.face_init and t.schedule_start)
    own_group = face_scale != 1.0 or (
        bimodal and t.stage_schedule == "face_continued" and bool(continues)
    )
    face_tower = {fusion for _, fusion in FACE_STREAM_MAP} if own_group else set()

    def alexnet_labels(branch):
        if freeze_branch:
            return "frozen"
        # The convolutions feed the attention; the FC layers and output do not.
        conv = "face" if "alexnet" in face_tower else "train"
        return {n: conv if n.startswith("conv") else "frozen" for n in branch}

    def labels(params):
        return {
            k: "frozen"
            if k in frozen_modules
            else alexnet_labels(v)
            if k == "alexnet"
            else "face"
            if k in face_tower
            else "train"
            for k, v in params.items()
        }

    if not face_tower:
        opt = optimizer(1.0, clip=True)
        if frozen_modules or unused_head:
            opt = optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels)
        return opt
    # Two rates: one clip over all gradients first, then each group its own schedule.
    opt = optax.multi_transform(
        {
            "train": optimizer(1.0, clip=False),
            "face": optimizer(face_scale, clip=False, face=True),
            "frozen": optax.set_to_zero(),
        },
        labels,
    )
    if t.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm), opt)
    return opt


def losses(
    config: ml_collections.ConfigDict,
    outputs: Mapping[str, jax.Array],
    batch: Mapping[str, jax.Array],
    aux_weight: Any = None,
) -> dict[str, jax.Array]:
    """total = main + lambda * aux (Eq. 31) [+ the heads' weight * their losses]; aux is 0 when
    the model has no gate. `aux_weight`: lambda, if not `config.loss.aux_weight` (a population
    member's own, a traced scalar)."""
    aux_weight = config.loss.aux_weight if aux_weight is None else aux_weight
    main = objectives.main_loss(
        config.loss.main, outputs["outputs"], batch["labels"], batch["mask"]
    )
    if "audio_gate" in outputs:
        aux = objectives.aux_modality_loss(
            outputs["audio_gate"], batch["speech_energy"], batch["face_present"], batch["mask"]
        )
    else:
        aux = jnp.zeros((), jnp.float32)
    parts = {"loss": main + aux_weight * aux, "loss_main": main, "loss_aux": aux}
    if "audio_outputs" in outputs:  # issue 9: per-modality heads (model.modality_heads)
        parts["loss_heads"] = objectives.modality_head_loss(
            config.loss.main, outputs, batch, config.loss.audio_head_weight
        )
        parts["loss"] = parts["loss"] + config.loss.modality_head_weight * parts["loss_heads"]
    return parts


def model_variables(state: Any, params: Any = None) -> dict[str, Any]:
    """Flax variables of a train state: its (or the given) params, plus batch stats if any."""
    variables = {"params": state.params if params is None else params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def state_initializer(model: Any, tx: optax.GradientTransformation, example: Any):
    """rng -> fresh TrainState of `model` (params, batch stats, optimiser) for `example` inputs."""

    def init(rng: jax.Array) -> TrainState:
        params_rng, dropout_rng = jax.random.split(rng)
        variables = model.init({"params": params_rng, "dropout": dropout_rng}, example, train=False)
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            tx=tx,
            batch_stats=variables.get("batch_stats", {}),
        )

    return init


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    base_rng: jax.Array,
    config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step: (state, batch, rng) -> (state, metrics)."""
    rng = jax.random.fold_in(base_rng, state.step)

    def loss_fn(params):
        variables = model_variables(state, params)
        outputs, updates = state.apply_fn(
            variables, batch, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
        )
        parts = losses(config, outputs, batch)
        return parts["loss"], (parts, updates.get("batch_stats", state.batch_stats), outputs)

    frozen = _frozen_params(state.params, config)
    if frozen:  # gradients of the trainable part only: none are computed for the frozen branch
        trainable = {k: v for k, v in state.params.items() if k not in frozen}
        grads, (parts, batch_stats, outputs) = jax.grad(
            lambda p: loss_fn({**p, **frozen}), has_aux=True
        )(trainable)
        grad_norm = optax.tree.norm(grads)  # of the trained parameters only
        grads = {**grads, **jax.tree.map(jnp.zeros_like, frozen)}  # set_to_zero ignores them
    else:
        grads, (parts, batch_stats, outputs) = jax.grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
    if _frozen_modules(config) and "alexnet" in batch_stats:  # frozen: keep its BN statistics
        batch_stats = {**batch_stats, "alexnet": state.batch_stats["alexnet"]}
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = dict(parts, grad_norm=grad_norm)
    if "audio_gate" in outputs:
        mask = batch["mask"]
        metrics["audio_gate_mean"] = jnp.sum(outputs["audio_gate"] * mask) / jnp.maximum(
            mask.sum(), 1.0
        )
    return new_state, metrics


def _frozen_modules(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The modules kept fixed: the face CNN (`model.freeze_video`), or the whole face stream
    (`model.freeze_face_stream`, `bimodal.FROZEN_FACE_STREAM`)."""
    if config.model.freeze_face_stream:
        return FROZEN_FACE_STREAM
    return ("alexnet",) if config.model.freeze_video else ()


def _frozen_params(params: Mapping[str, Any], config: ml_collections.ConfigDict) -> dict:
    """The parameters of the frozen modules ({} unless a branch or the face stream is frozen)."""
    return {k: params[k] for k in _frozen_modules(config) if k in params}


def eval_step(
    state: TrainState, batch: Mapping[str, jax.Array], model: BimodalModel, chunk_setting: int = 0
) -> dict[str, jax.Array]:
    """Inference over a batch of windows; a live face CNN runs in chunks of frames
    (`config.eval.face_chunk_frames`) when the batch holds more frames than a chunk."""
    variables = model_variables(state)
    if model.mode in ("fusion", "video") and "faces" in batch and "face_feature_map" not in batch:
        faces = batch["faces"]
        frames = faces.shape[0] * -(-faces.shape[1] // model.video_frame_stride)
        chunk = face_chunk_frames(model, faces.shape[2:], chunk_setting)
        if 0 < chunk < frames:
            alex = {c: v["alexnet"] for c, v in variables.items() if "alexnet" in v}
            fmap, _ = face_feature_map(model, alex, faces, False, chunk_frames=chunk)
            batch = {**batch, "face_feature_map": fmap}  # `faces` stays: it gives the step count
    outputs = state.apply_fn(variables, batch, train=False)
    # The fused outputs, the gate and, with modality_heads, each stream's own head.
    return {k: outputs[k] for k in pipeline.EVAL_KEYS if k in outputs}


class Trainer:
    """Builds the model, mesh, shardings and jitted functions for a config."""

    def __init__(
        self, config: ml_collections.ConfigDict, example: Mapping[str, np.ndarray], total_steps: int
    ):
        self.config = config
        self.mesh = sharding.make_mesh(config.mesh)
        self.data_size = self.mesh.shape["data"]
        for key in ("train.batch_size", "eval.batch_size"):
            value = config.train.batch_size if key.startswith("train") else config.eval.batch_size
            if value % self.data_size:
                raise config_lib.ConfigError(
                    f"config.{key}={value} is not divisible by the {self.data_size} devices of "
                    "the mesh's data axis"
                )
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.replicated = sharding.replicated(self.mesh)
        self.model = build_model(config.model, mesh_devices=self.mesh.size)
        self.tx = make_optimizer(config, total_steps)
        self.base_rng = jax.random.key(config.seed)
        example = {k: jnp.asarray(v[:1]) for k, v in example.items()}

        self._init = state_initializer(self.model, self.tx, example)
        self.abstract_state = jax.eval_shape(self._init, self.base_rng)
        self.state_sharding = jax.tree.map(lambda _: self.replicated, self.abstract_state)
        self.train_step = jax.jit(
            functools.partial(train_step, config=config),
            in_shardings=(self.state_sharding, self.batch_sharding, self.replicated),
            out_shardings=(self.state_sharding, self.replicated),
            donate_argnums=(0,),
        )
        self.eval_step = jax.jit(
            functools.partial(
                eval_step, model=self.model, chunk_setting=config.eval.face_chunk_frames
            ),
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=self.batch_sharding,
        )

    def init_state(self) -> TrainState:
        return jax.jit(self._init, out_shardings=self.state_sharding)(self.base_rng)

    def restore_target(self) -> Any:
        return checkpointing.abstract_with_shardings(self.abstract_state, self.state_sharding)

    def to_global(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        return pipeline.batches_to_global(local_batch, self.batch_sharding)

    def predict(self, state: TrainState, plan: pipeline.EvalPlan) -> dict[str, dict]:
        """Runs the model over an eval plan; returns per-session arrays [T, ...]."""
        pi, pc = jax.process_index(), jax.process_count()
        outputs = []
        for batch in plan.batches:
            local = {k: v[pi * len(v) // pc : (pi + 1) * len(v) // pc] for k, v in batch.items()}
            out = self.eval_step(state, self.to_global(local))
            outputs.append(
                {
                    k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
                    for k, v in out.items()
                }
            )
        return pipeline.stitch(plan, outputs)


def evaluate(
    trainer: Trainer,
    state: TrainState,
    plan: pipeline.EvalPlan,
    sessions: Sequence[pipeline.PreparedSession],
    prefix: str,
) -> dict[str, float]:
    """CCC / R^2 / RMSE pooled and per session, plus the mean audio gate."""
    results = trainer.predict(state, plan)
    predictions = {name: r["outputs"] for name, r in results.items()}
    targets = {s.name: s.arrays["labels"] for s in sessions}
    scores = metrics_lib.evaluate_sessions(predictions, targets)
    if all("audio_gate" in r for r in results.values()):
        scores["audio_gate_mean"] = float(
            np.mean(np.concatenate([r["audio_gate"] for r in results.values()]))
        )
    return {f"{prefix}/{k}": v for k, v in scores.items()}


# ------------------------------------------------------------------------ evaluation splits


def eval_split_sessions(
    sessions: Sequence[pipeline.PreparedSession], config: ml_collections.ConfigDict
) -> dict[str, list[pipeline.PreparedSession]]:
    """{split: labelled sessions} for each split of `config.eval.splits` that has any.

    Only "dev" selects the best checkpoint (`selection_metrics`); other splits are logged under
    their own name. Says so once when there is no labelled dev session to select on.
    """
    groups = {}
    for split in config.eval.splits:
        group = [s for s in sessions if s.split == split and s.has_labels]
        if group:
            groups[split] = group
    if SELECTION_SPLIT not in groups:
        log.warning(
            "No labelled %s sessions%s: nothing to select a checkpoint on, so 'best' is the "
            "latest checkpoint (give the corpus a dev split, e.g. "
            "config.data.folder.dev_fraction).",
            SELECTION_SPLIT,
            "" if SELECTION_SPLIT in config.eval.splits else " (config.eval.splits omits 'dev')",
        )
    return groups


def silent_window(
    config: ml_collections.ConfigDict,
    workdir: str,
    sessions: Sequence[pipeline.PreparedSession],
) -> dict[str, np.ndarray] | None:
    """A silent window's inputs for modality dropout (None when `train.modality_dropout` is 0)."""
    if config.train.modality_dropout <= 0:
        return None
    from avemo.data import augment

    normalizer = None
    if config.data.corpus != "memory":
        from avemo.audio import normalize
        from avemo.data.prepare import NORMALIZER_FILE

        normalizer = normalize.load(os.path.join(workdir, NORMALIZER_FILE))
    feature_dim = int(sessions[0].arrays["audio_features"].shape[-1])
    return augment.silent_window(config, normalizer, feature_dim)


def far_field_inputs(
    config: ml_collections.ConfigDict,
    workdir: str,
    sessions: Sequence[pipeline.PreparedSession],
) -> dict[str, dict[str, np.ndarray]] | None:
    """The training sessions' far-field audio inputs (None when `train.far_field_augment` is 0)."""
    if config.train.far_field_augment <= 0:
        return None
    from avemo.audio import normalize
    from avemo.data import augment
    from avemo.data.corpora import get_sessions
    from avemo.data.prepare import NORMALIZER_FILE

    train = [s for s in sessions if s.split == "train" and s.has_labels]
    raw = {s.name: s for s in get_sessions(config.data)}
    normalizer = normalize.load(os.path.join(workdir, NORMALIZER_FILE))
    started = time.time()
    out = augment.far_field_sessions(train, raw, config, normalizer, threads=os.cpu_count() or 1)
    log.info(
        "Far-field augmentation: %d training sessions heard from afar (%.0f s).",
        len(out),
        time.time() - started,
    )
    return out


def selection_metrics(metrics: Mapping[str, float], evaluated: bool) -> dict[str, float] | None:
    """The dev metrics that choose the best checkpoint; None when dev was not evaluated."""
    chosen = {k: v for k, v in metrics.items() if k.startswith(f"{SELECTION_SPLIT}/")}
    return chosen if evaluated and chosen else None


# ----------------------------------------------------------------------------------------- loop


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners): no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):  # noqa: ARG002
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self) -> bool:
        """True on every process if any process was asked to stop."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.array([self.requested]))
        return bool(np.any(flags))


def _drain(pending: list[tuple[int, dict]]) -> dict[str, float]:
    """Fetches pending step metrics, stops on a non-finite loss naming the step, returns means."""
    fetched = jax.device_get(pending)
    for step, m in fetched:
        if not np.isfinite(m["loss"]):
            raise NonFiniteLossError(
                f"non-finite loss ({float(m['loss'])}) at step {step}; stopping. The last good "
                "checkpoint is kept."
            )
    means = (
        {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]} if fetched else {}
    )
    pending.clear()
    return means


def _latest_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> int | None:
    """The latest checkpoint step in `workdir` (None: a fresh run)."""
    if not config.checkpoint.enabled:
        return None
    ckpt = checkpointing.Checkpointer(workdir, None, async_save=False)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains per `config` in `workdir` (resuming if it holds a checkpoint); returns dev metrics."""
    config_lib.validate(config)
    workdir = os.path.abspath(workdir)
    is_chief = jax.process_index() == 0
    if is_chief:
        os.makedirs(workdir, exist_ok=True)
        tmp = os.path.join(workdir, "config.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2))
        os.replace(tmp, os.path.join(workdir, "config.json"))

    from avemo import warm_start

    # The single-modality first stages (video-only, audio-only), fresh runs only.
    stages = warm_start.first_stages(config) if _latest_checkpoint(config, workdir) is None else []
    for subdir, stage in stages:
        stage_dir = os.path.join(workdir, subdir)
        if not warm_start.stage_finished(stage_dir, stage.train.num_steps):
            log.info(
                "First stage: the %s-only model, %d steps, in %s.",
                stage.model.mode,
                stage.train.num_steps,
                stage_dir,
            )
            train_and_evaluate(stage, stage_dir)
            if not warm_start.stage_finished(stage_dir, stage.train.num_steps):
                log.info("The %s stopped early (preempted); run again to resume it.", subdir)
                return {}
            hostmem.release()  # the stage's batches, buffers and programs
    last_eval, finished = _train(config, workdir)
    if config.eval.report_at_end and finished:  # every process predicts; 0 writes
        from avemo import evaluate as evaluate_lib

        hostmem.release()  # the trainer's pipeline, state and programs are gone
        evaluate_lib.report_after_training(config, workdir)
    return last_eval


def _train(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict[str, float], bool]:
    """The training loop of `train_and_evaluate`; returns (last dev metrics, whether the run
    reached its last step). Its own function so that the pipeline, the trainer and the state are
    released when it returns, before the reports load the chosen checkpoint."""
    is_chief = jax.process_index() == 0
    sessions = load_sessions(config, workdir)
    total_steps = num_train_steps(config, pipeline.num_train_windows(sessions, config))
    trainer = Trainer(config, example_batch(sessions, config, 1), total_steps)
    from avemo.data import frozen

    fresh, face_stream = None, None
    if config.model.freeze_face_stream:
        # The fixed stream is the warm start's (the face stage's, or model.face_init's), whether
        # this run starts or resumes: computed now, so that its maps and states can be.
        fresh = _fresh_state(config, workdir, trainer)
        if frozen.enabled(config):
            branch = frozen.branch_variables(fresh.params, fresh.batch_stats)
            sessions = frozen.attach(sessions, config, jax.device_get(branch))
        face_stream = frozen.stream_windows(trainer.model, model_variables(fresh))
    elif frozen.enabled(config):  # frozen face branch: its feature maps once, cached (Sec. 6.4)
        sessions = frozen.attach(sessions, config, frozen.initial_branch_variables(config, trainer))
    eval_sets = eval_split_sessions(sessions, config)
    data_iter = iter(
        pipeline.train_dataset(
            sessions,
            config,
            jax.process_index(),
            jax.process_count(),
            silence=silent_window(config, workdir, sessions),
            far_field=far_field_inputs(config, workdir, sessions),
            face_stream=face_stream,
        )
    )
    if config.train.device_prefetch:  # batches on the device ahead of the step
        data_iter = pipeline.DevicePrefetch(
            data_iter, trainer.to_global, config.train.device_prefetch
        )
    plans = {split: pipeline.eval_plan(group, config) for split, group in eval_sets.items()}
    writer = MetricWriter(workdir, enabled=is_chief)
    ckpt = (
        checkpointing.Checkpointer(
            workdir,
            f"{SELECTION_SPLIT}/{config.checkpoint.best_metric}",
            config.checkpoint.async_save,
        )
        if config.checkpoint.enabled
        else None
    )

    start_step = 0
    if ckpt is not None and ckpt.latest_step() is not None:
        start_step = ckpt.latest_step()
        state, _ = ckpt.restore_matching(
            start_step, trainer.restore_target(), data_iter, "use a new --workdir"
        )
        log.info("Resumed from %s at step %d.", ckpt.directory, start_step)
    else:
        state = fresh if fresh is not None else _fresh_state(config, workdir, trainer)
        if is_chief:
            params = sum(x.size for x in jax.tree.leaves(state.params))
            log.info(
                "Initialised %s model with %s parameters on %d device(s).",
                config.model.mode,
                f"{params:,}",
                trainer.data_size,
            )
            writer.write_hparams(dict(_flat_items(config)))

    meta = {"config": json.loads(config.to_json_best_effort())}
    pending: list[tuple[int, dict]] = []
    last_eval: dict[str, float] = {}
    t_start, step_start = time.time(), start_step
    with _Preemption() as preemption:
        step = start_step
        try:
            for step in range(start_step + 1, total_steps + 1):
                batch = next(data_iter)
                if not config.train.device_prefetch:
                    batch = trainer.to_global(batch)
                state, step_metrics = trainer.train_step(state, batch, trainer.base_rng)
                pending.append((step, step_metrics))
                last = step == total_steps
                if step % config.train.log_every_steps == 0 or last:
                    means = _drain(pending)
                    elapsed = time.time() - t_start
                    rate = (step - step_start) / max(elapsed, 1e-9)
                    means["steps_per_second"] = rate
                    writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
                    log.info(
                        "step %d/%d  loss %.4f  %.2f steps/s  ETA %s",
                        step,
                        total_steps,
                        means["loss"],
                        rate,
                        _format_eta((total_steps - step) / rate),
                    )
                evaluated = bool(plans) and (step % config.train.eval_every_steps == 0 or last)
                if evaluated:
                    _drain(pending)
                    last_eval = {}
                    for split, plan in plans.items():  # metrics named by their split
                        last_eval.update(evaluate(trainer, state, plan, eval_sets[split], split))
                    writer.write_scalars(step, last_eval)
                if evaluated or step == start_step + 1:  # after the evaluation, the compilation
                    hostmem.trim()
                stop = preemption.agreed()
                if ckpt is not None and (
                    evaluated or stop or last or step % config.train.checkpoint_every_steps == 0
                ):
                    _drain(pending)
                    ckpt.save(step, state, data_iter, meta, selection_metrics(last_eval, evaluated))
                if stop:
                    log.warning(
                        "SIGTERM received: saved step %d to %s; exiting. Re-run the same "
                        "command to resume.",
                        step,
                        workdir,
                    )
                    break
        finally:
            if isinstance(data_iter, pipeline.DevicePrefetch):
                data_iter.close()
            writer.flush()
            if ckpt is not None:
                ckpt.close()
            writer.close()
    if is_chief:
        summary = {"step": step, **last_eval}
        tmp = os.path.join(workdir, "final_metrics.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        os.replace(tmp, os.path.join(workdir, "final_metrics.json"))
    return last_eval, step >= total_steps


def _fresh_state(config: ml_collections.ConfigDict, workdir: str, trainer: Trainer) -> TrainState:
    """The state a fresh run starts from: initialised from the seed, then the warm starts
    (`model.video_init`; the face / audio stream of a video- / audio-only run, issue 9)."""
    from avemo import warm_start

    state = trainer.init_state()
    if config.model.video_init:  # stage-1 face-feature weights (avemo.stage1)
        from avemo import stage1

        params, batch_stats = stage1.load_into(
            state.params, state.batch_stats, config.model.video_init
        )
        state = state.replace(params=params, batch_stats=batch_stats)
        log.info("Video branch initialised from %s.", config.model.video_init)
    params, batch_stats = warm_start.load_streams(config, workdir, state.params, state.batch_stats)
    return state.replace(params=params, batch_stats=batch_stats)


def _flat_items(cfg: Mapping[str, Any], prefix: str = ""):
    for key, value in cfg.items():
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            yield from _flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
