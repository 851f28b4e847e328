"""Population training: K sweep points that share the model's shapes, trained in one program.

`train_population(configs, workdirs)` trains K configs that differ only in per-member
hyper-parameters (`MEMBER_KEYS`: seed, loss.aux_weight (lambda of Eq. 31), learning rate, the
dropout rates) as one jitted step over a leading *member* axis of the parameters, the optimiser
state, the batch statistics and the RNG keys. Everything else of the configs must be equal
(`group_key`); `launch.sweep --executor population` forms the groups.

How the step is vectorised (`PopulationTrainer`):
- attention, LSTMs, gate, head, losses and the optimiser update: `jax.vmap` over members;
- the face CNN (improved AlexNet, Sec. 4.2): `member_conv="loop"` runs the K members' CNNs one
  after another inside the program (XLA CPU lowers a vmapped -- grouped -- convolution ~15x slower
  than K plain ones), `"vmap"` vectorises it (fast on GPUs); "auto" loops on CPU with one device
  on the members axis and vmaps otherwise;
- a frozen face branch that every member shares (`model.freeze_video` with the same
  `model.video_init`) with a shared data order is run once per step for all members, as a
  non-member input: the CNN's feature maps enter each member's model as `face_feature_map`.
- per-member hyper-parameters are arrays: the seed gives each member's initialisation and dropout
  key (`fold_in(key(seed), step)`, as `avemo.train`); lambda multiplies the member's aux loss;
  the learning rate scales the optimiser's update (the schedules are linear in the peak rate);
  dropout rates go to `avemo.models.dropout.Dropout` as traced values.

Data: `data_order="shared"` feeds one batch per step to all members (the data order of the first
member's seed); `"member"` gives each member its own Grain pipeline (its own seed's order, exactly
a separate run's batches) at the cost of K input pipelines and no shared frozen CNN.

Outputs: each member writes its workdir exactly like `avemo.train.train_and_evaluate` (config.json,
metrics.jsonl, TensorBoard, final_metrics.json, checkpoints with the latest and the best dev step,
reports). The population as a whole is checkpointed in its own directory (stacked state and the
data iterators' positions) and resumed from it; SIGTERM finishes the step, saves and returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from avemo import checkpointing, train, warm_start
from avemo import config as config_lib
from avemo.data import pipeline
from avemo.models.bimodal import (  # noqa: F401 (face_cnn: part of this module's interface)
    BimodalModel,
    build_model,
    face_chunk_frames,
    face_cnn,
    face_feature_map,
)
from avemo.reporting.writers import MetricWriter

log = logging.getLogger("avemo")

# Keys that may differ between the members of one population (each becomes a [K] array).
MEMBER_KEYS = (
    "seed",
    "loss.aux_weight",
    "train.learning_rate",
    "model.head_dropout",
    "model.audio_input_dropout",
)
# Keys that do not change what is computed (where it runs, how often it is logged is shared).
_IGNORED_KEYS = ("mesh.data",)
DATA_ORDERS = ("shared", "member")
MEMBER_CONVS = ("auto", "loop", "vmap")
POPULATION_FILE = "population.json"
READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)


class PopulationError(ValueError):
    """The configs cannot form one population (they differ in a key that is not per member)."""


# ------------------------------------------------------------------------------------ grouping


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
    out = {}
    for key, value in train._flat_items(config):
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def group_key(config: ml_collections.ConfigDict) -> str:
    """Everything of a config that members must share, as one canonical JSON string.

    Per-member keys are left out, except that audio input dropout on (> 0) or off is structural
    (the layer exists or not, which changes the model's random streams).
    """
    flat = {k: v for k, v in _flat(config).items() if k not in MEMBER_KEYS + _IGNORED_KEYS}
    flat["model.audio_input_dropout>0"] = config.model.audio_input_dropout > 0
    return json.dumps(flat, sort_keys=True, default=str)


def group_indices(configs: Sequence[ml_collections.ConfigDict]) -> list[list[int]]:
    """Indices of configs grouped by `group_key`, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(group_key(config), []).append(i)
    return list(groups.values())


def differing_keys(configs: Sequence[ml_collections.ConfigDict]) -> list[str]:
    """Non-member keys whose values differ between `configs` (why they form separate groups)."""
    flats = [json.loads(group_key(c)) for c in configs]
    keys = sorted(set().union(*flats))
    return [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    """A member's Flax variables: its params, plus batch stats if the model has any."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def population_name(workdirs: Sequence[str]) -> str:
    """A stable directory name for the population of these member workdirs."""
    digest = hashlib.sha1("\n".join(os.path.abspath(w) for w in workdirs).encode()).hexdigest()
    return f"pop-{len(workdirs)}-{digest[:10]}"


# -------------------------------------------------------------------------------- the face CNN


def _take(tree: Any, m: int) -> Any:
    return jax.tree.map(lambda x: x[m], tree)


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


# ---------------------------------------------------------------------------------- trainer


def member_hparams(configs: Sequence[ml_collections.ConfigDict]) -> dict[str, np.ndarray]:
    """Per-member hyper-parameters as [K] arrays."""
    return {
        "aux_weight": np.array([c.loss.aux_weight for c in configs], np.float32),
        "learning_rate": np.array([c.train.learning_rate for c in configs], np.float32),
        "head_dropout": np.array([c.model.head_dropout for c in configs], np.float32),
        "audio_input_dropout": np.array([c.model.audio_input_dropout for c in configs], np.float32),
    }


def _uniform(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


class PopulationTrainer:
    """The model, the member mesh and the jitted population step / evaluation for K configs."""

    def __init__(
        self,
        configs: Sequence[ml_collections.ConfigDict],
        example: Mapping[str, np.ndarray],
        total_steps: int,
        data_order: str = "shared",
        member_conv: str = "auto",
        member_devices: int = -1,
    ):
        if not configs:
            raise PopulationError("a population needs at least one member")
        keys = {group_key(c) for c in configs}
        if len(keys) > 1:
            raise PopulationError(
                "the configs differ in keys that cannot vary per member: "
                + ", ".join(differing_keys(configs))
            )
        if data_order not in DATA_ORDERS:
            raise PopulationError(f"data_order={data_order!r} is not one of {DATA_ORDERS}")
        if member_conv not in MEMBER_CONVS:
            raise PopulationError(f"member_conv={member_conv!r} is not one of {MEMBER_CONVS}")
        if configs[0].model.freeze_face_stream and data_order != "member":
            raise PopulationError(
                "model.freeze_face_stream: each member's fixed face stream gives its own states "
                "per training window, so each member needs its own pipeline: use --data-order "
                "member"
            )
        self.configs = list(configs)
        self.config = config = configs[0]
        self.k = k = len(configs)
        self.data_order = data_order
        self.mesh = make_population_mesh(k, config.mesh, member_devices)
        self.member_size = self.mesh.shape["members"]
        self.data_size = self.mesh.shape["data"]
        for name, value in (
            ("train.batch_size", config.train.batch_size),
            ("eval.batch_size", config.eval.batch_size),
        ):
            if value % self.data_size:
                raise config_lib.ConfigError(
                    f"config.{name}={value} is not divisible by the {self.data_size} devices of "
                    "the mesh's data axis"
                )
        if member_conv == "auto":
            member_conv = (
                "loop" if jax.default_backend() == "cpu" and self.member_size == 1 else "vmap"
            )
        self.member_conv = member_conv

        self.hparams = member_hparams(configs)
        # Structure: per-member values enter the model as arrays only where they differ.
        model = build_model(config.model, mesh_devices=self.mesh.size)
        self.model = model
        self._array_dropouts = {
            name: not _uniform(self.hparams[name])
            for name in ("head_dropout", "audio_input_dropout")
        }
        self.has_face = config.model.mode in ("fusion", "video")
        self.shared_face = bool(
            self.has_face
            and config.model.freeze_video
            and config.model.video_init
            and data_order == "shared"
        )
        # The learning rate: exact when all members share it; else the update is scaled by
        # lr_m / lr_0 (every schedule of make_optimizer is linear in its peak rate).
        self.lr_scale = None
        if not _uniform(self.hparams["learning_rate"]):
            self.lr_scale = self.hparams["learning_rate"] / self.hparams["learning_rate"][0]
        self.tx = train.make_optimizer(config, total_steps)
        self.seeds = [int(c.seed) for c in configs]

        example = {kk: jnp.asarray(v[:1]) for kk, v in example.items()}
        self._init = train.state_initializer(model, self.tx, example)
        member_abstract = jax.eval_shape(self._init, jax.random.key(0))
        self.member_abstract_state = member_abstract
        self.abstract_state = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct((k,) + a.shape, a.dtype), member_abstract
        )
        self.member_sharding = NamedSharding(self.mesh, P("members"))
        self.replicated = NamedSharding(self.mesh, P())
        self.state_sharding = jax.tree.map(lambda _: self.member_sharding, self.abstract_state)
        self.batch_sharding = NamedSharding(
            self.mesh, P("members", "data") if data_order == "member" else P("data")
        )
        self.eval_batch_sharding = NamedSharding(self.mesh, P("data"))
        self.base_rngs = jax.device_put(
            jax.vmap(jax.random.key)(jnp.asarray(self.seeds, jnp.uint32)), self.member_sharding
        )
        self.hparam_arrays = {
            name: jax.device_put(v, self.member_sharding) for name, v in self.hparams.items()
        }
        if self.lr_scale is not None:
            self.hparam_arrays["lr_scale"] = jax.device_put(self.lr_scale, self.member_sharding)
        self.train_step = jax.jit(
            self._train_step,
            in_shardings=(
                self.state_sharding,
                self.batch_sharding,
                self.member_sharding,
                jax.tree.map(lambda _: self.member_sharding, self.hparam_arrays),
            ),
            out_shardings=(self.state_sharding, self.member_sharding),
            donate_argnums=(0,),
        )
        self.eval_step = jax.jit(
            self._eval_step,
            in_shardings=(self.state_sharding, self.eval_batch_sharding),
            out_shardings=NamedSharding(self.mesh, P("members", "data")),
        )

    # ------------------------------------------------------------------------------ state

    def init_state(self, workdirs: Sequence[str] = ()) -> train.TrainState:
        """Each member initialised exactly as a separate run with its seed (stage-1 weights too;
        a face stream from a video-only run needs the members' `workdirs`)."""
        init = jax.jit(self._init)
        members = []
        workdirs = list(workdirs) or [""] * len(self.configs)
        for config, seed, workdir in zip(self.configs, self.seeds, workdirs, strict=True):
            state = init(jax.random.key(seed))
            if config.model.video_init:
                from avemo import stage1

                params, batch_stats = stage1.load_into(
                    state.params, state.batch_stats, config.model.video_init
                )
                state = state.replace(params=params, batch_stats=batch_stats)
            if workdir:  # each member from its own video- / audio-only runs (issue 9)
                params, batch_stats = warm_start.load_streams(
                    config, workdir, state.params, state.batch_stats
                )
                state = state.replace(params=params, batch_stats=batch_stats)
            members.append(state)
        return self.stack(members)

    def stack(self, members: Sequence[train.TrainState]) -> train.TrainState:
        # On the host: a jnp.stack per leaf would compile a program for every leaf shape.
        host = jax.device_get(list(members))
        return jax.device_put(jax.tree.map(lambda *xs: np.stack(xs), *host), self.state_sharding)

    def member(self, state: train.TrainState, m: int) -> train.TrainState:
        """Member `m` as a separate run's TrainState (for its checkpoint)."""
        return jax.device_put(_take(state, m), self.replicated)

    def restore_target(self) -> Any:
        return checkpointing.abstract_with_shardings(self.abstract_state, self.state_sharding)

    # ------------------------------------------------------------------------ the face CNN

    def _face_maps(
        self, params, batch_stats, faces, rngs, train_mode, per_member_faces, steps=None
    ):
        """Per-member feature maps [K, B, L, k, C] and new alexnet batch stats (train mode)."""
        alex_vars = {"params": params["alexnet"]}
        if "alexnet" in batch_stats:
            alex_vars["batch_stats"] = batch_stats["alexnet"]

        # a frozen CNN: inference mode, no gradient (as the model)
        frozen = "alexnet" in train._frozen_modules(self.config)

        def one(variables, member_faces, rng):
            fmap, stats = face_feature_map(
                self.model, variables, member_faces, train_mode and not frozen, rng, steps=steps
            )
            return (jax.lax.stop_gradient(fmap), None) if frozen else (fmap, stats)

        if self.member_conv == "vmap":
            return jax.vmap(one, in_axes=(0, 0 if per_member_faces else None, 0))(
                alex_vars, faces, rngs
            )
        maps, stats = [], []
        for m in range(self.k):
            fm, st = one(_take(alex_vars, m), faces[m] if per_member_faces else faces, rngs[m])
            maps.append(fm)
            stats.append(st)
        return jnp.stack(maps), (None if stats[0] is None else _stack(stats))

    def _live_face(self, batch) -> bool:
        """Whether this step runs a face CNN (no: audio mode, or cached frozen maps)."""
        return self.has_face and "faces" in batch

    def _shared_face_map(self, state, faces, steps=None):
        """The frozen branch, shared by all members (identical stage-1 weights): run once.

        As in `BimodalModel._face_maps`, the frozen CNN runs in inference mode (its stage-1
        running statistics) under stop_gradient.
        """
        alex_vars = {"params": _take(state.params["alexnet"], 0)}
        if "alexnet" in state.batch_stats:
            alex_vars["batch_stats"] = _take(state.batch_stats["alexnet"], 0)
        alex_vars = jax.lax.stop_gradient(alex_vars)
        fmap, _ = face_feature_map(self.model, alex_vars, faces, False, None, steps=steps)
        return jax.lax.stop_gradient(fmap)

    # --------------------------------------------------------------------------- the step

    def _member_model(self, hp):
        overrides = {n: hp[n] for n, is_array in self._array_dropouts.items() if is_array}
        return self.model.clone(**overrides) if overrides else self.model

    def _train_step(self, state, batch, base_rngs, hp):
        config = self.config
        rngs = jax.vmap(jax.random.fold_in)(base_rngs, state.step)
        batch_axis = 0 if self.data_order == "member" else None

        def total_loss(params):
            fmaps, fmap_axis, alex_stats = None, None, None
            steps = batch["mask"].shape[-1]  # training faces may be every s-th step's only
            if self._live_face(batch) and self.shared_face:
                fmaps = self._shared_face_map(state, batch["faces"], steps)
            elif self._live_face(batch):
                fmaps, alex_stats = self._face_maps(
                    params, state.batch_stats, batch["faces"], rngs, True, batch_axis == 0, steps
                )
                fmap_axis = 0

            def member(p, bs, fmap, rng, h, b):
                b = dict(b)
                if fmap is not None:
                    b["face_feature_map"] = fmap  # `faces` stays: it gives the step count
                variables = _variables(p, bs)
                outputs, updates = self._member_model(h).apply(
                    variables, b, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
                )
                # The member's own lambda; every other term (the heads' losses) as in train.
                parts = train.losses(config, outputs, b, aux_weight=h["aux_weight"])
                extra = {}
                if "audio_gate" in outputs:
                    mask = b["mask"]
                    extra["audio_gate_mean"] = jnp.sum(outputs["audio_gate"] * mask) / (
                        jnp.maximum(mask.sum(), 1.0)
                    )
                return parts, dict(updates.get("batch_stats", bs)), extra

            parts, new_stats, extra = jax.vmap(member, in_axes=(0, 0, fmap_axis, 0, 0, batch_axis))(
                params, state.batch_stats, fmaps, rngs, hp, batch
            )
            if alex_stats is not None:
                new_stats["alexnet"] = alex_stats
            if "alexnet" in train._frozen_modules(config) and "alexnet" in state.batch_stats:
                new_stats["alexnet"] = state.batch_stats["alexnet"]  # frozen: its own stats
            return jnp.sum(parts["loss"]), (parts, new_stats, extra)

        grads, (parts, batch_stats, extra) = jax.grad(total_loss, has_aux=True)(state.params)

        def update(g, opt_state, params, scale):
            updates, opt_state = self.tx.update(g, opt_state, params)
            if scale is not None:
                updates = jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)
            return optax.apply_updates(params, updates), opt_state

        params, opt_state = jax.vmap(update)(
            grads, state.opt_state, state.params, hp.get("lr_scale")
        )
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats
        )
        metrics = dict(parts, grad_norm=jax.vmap(optax.tree.norm)(grads), **extra)
        return new_state, metrics

    def _eval_step(self, state, batch):
        fmaps, fmap_axis = None, None
        if self._live_face(batch) and self.shared_face:
            alex_vars = {"params": _take(state.params["alexnet"], 0)}
            if "alexnet" in state.batch_stats:
                alex_vars["batch_stats"] = _take(state.batch_stats["alexnet"], 0)
            faces = batch["faces"]
            setting = self.config.eval.face_chunk_frames
            chunk = face_chunk_frames(self.model, faces.shape[2:], setting)
            fmaps, _ = face_feature_map(self.model, alex_vars, faces, False, chunk_frames=chunk)
        elif self._live_face(batch):
            fmaps, _ = self._face_maps(  # evaluation batches are the same for every member
                state.params, state.batch_stats, batch["faces"], [None] * self.k, False, False
            )
            fmap_axis = 0

        def member(p, bs, fmap):
            b = dict(batch)
            if fmap is not None:
                b["face_feature_map"] = fmap  # `faces` stays: it gives the step count
            variables = _variables(p, bs)
            outputs = self.model.apply(variables, b, train=False)
            # what `train.eval_step` keeps: the outputs, the heads' (post-processing's face
            # weight reads the face head), the gates
            return {k: outputs[k] for k in pipeline.EVAL_KEYS if k in outputs}

        return jax.vmap(member, in_axes=(0, 0, fmap_axis))(state.params, state.batch_stats, fmaps)

    # --------------------------------------------------------------------------- helpers

    def to_global(self, batch: Mapping[str, np.ndarray], sharding=None) -> dict[str, jax.Array]:
        return pipeline.batches_to_global(batch, sharding or self.batch_sharding)

    def predict(self, state: train.TrainState, plan: pipeline.EvalPlan) -> list[dict[str, dict]]:
        """Per-member per-session arrays [T, ...] over an eval plan."""
        outputs: list[list[dict]] = [[] for _ in range(self.k)]
        for batch in plan.batches:
            out = jax.device_get(
                self.eval_step(state, self.to_global(batch, self.eval_batch_sharding))
            )
            for m in range(self.k):
                outputs[m].append({key: np.asarray(v[m]) for key, v in out.items()})
        return [pipeline.stitch(plan, o) for o in outputs]


def restore_members(
    workdirs: Sequence[str], which: str = "best"
) -> tuple[PopulationTrainer, train.TrainState, list[ml_collections.ConfigDict], list[int]]:
    """The trained members of `workdirs` (one population's, or any that share shapes) stacked.

    Each member's checkpoint is the one `avemo.inference.load(workdir, which)` restores (its own
    best-by-dev step), so a `PopulationTrainer.predict` over the stacked state gives every
    member's predictions in one program: the members' LSTMs, attention and heads vectorised, a
    shared frozen face branch run once.

    Raises:
      PopulationError: the workdirs' models differ in more than `MEMBER_KEYS`.
      NoModelError: a workdir has no config or no checkpoint.
    """
    from avemo import inference

    configs = [inference.load_config(w) for w in workdirs]
    steps = [inference.checkpoint_step(w, c, which) for w, c in zip(workdirs, configs, strict=True)]
    example = inference.example_from_config(
        configs[0], inference.feature_dim(workdirs[0], configs[0])
    )
    # Evaluation batches are the same for every member, so the data order is "shared" (it makes
    # a frozen face branch with one stage-1 checkpoint run once for all).
    trainer = PopulationTrainer(configs, example, 1, data_order="shared")
    target = checkpointing.abstract_with_shardings(
        trainer.member_abstract_state,
        jax.tree.map(lambda _: trainer.replicated, trainer.member_abstract_state),
    )
    members = [
        inference.restore_state(w, c, step, target)
        for w, c, step in zip(workdirs, configs, steps, strict=True)
    ]
    return trainer, trainer.stack(members), configs, steps


class MemberPredictions:
    """Every member's predictions for a set of sessions, computed once for all members.

    `for_member(m)` is a `predict(key, sessions)` for `avemo.evaluate`: the first call with a key
    runs the population over the sessions, the others are served from memory.
    """

    def __init__(self, trainer: PopulationTrainer, state: train.TrainState):
        self.trainer, self.state = trainer, state
        self._done: dict[Any, list[dict[str, dict]]] = {}

    def for_member(self, m: int):
        def predict(key: Any, sessions: Sequence[pipeline.PreparedSession]) -> dict[str, dict]:
            full = (key, tuple(s.name for s in sessions))
            if full not in self._done:
                plan = pipeline.eval_plan(sessions, self.trainer.config)
                self._done[full] = self.trainer.predict(self.state, plan)
            return self._done[full][m]

        return predict


def attach_frozen_features(
    trainer: PopulationTrainer, sessions: Sequence[pipeline.PreparedSession]
) -> list[pipeline.PreparedSession]:
    """Sessions carrying the frozen face branch's cached maps (`avemo.data.frozen`), if enabled.

    Every member shares the branch (the same `model.video_init`), so its feature maps are
    computed once per session and no member runs a face CNN during training or evaluation.
    """
    from avemo.data import frozen

    config = trainer.config
    if not frozen.enabled(config) or config.model.freeze_face_stream:
        # (each member's fixed stream has its own CNN: its states come per member, see
        # `train_population`, and evaluation runs each member's CNN)
        return list(sessions)
    if not config.model.video_init:
        raise PopulationError(
            "model.freeze_video with the feature cache needs model.video_init (members' random "
            "face branches differ); set it, or model.frozen_feature_cache=False"
        )
    from avemo import stage1

    state0 = jax.jit(trainer._init)(jax.random.key(trainer.seeds[0]))
    params, stats = stage1.load_into(state0.params, state0.batch_stats, config.model.video_init)
    return frozen.attach(sessions, config, jax.device_get(frozen.branch_variables(params, stats)))


def make_population_mesh(
    k: int, mesh_cfg: ml_collections.ConfigDict, member_devices: int = -1
) -> jax.sharding.Mesh:
    """A (members, data) mesh: `member_devices` (-1: gcd(K, devices)) x the data axis.

    The data axis takes `config.mesh.data` devices (-1: the rest).
    """
    devices = jax.devices()
    n = len(devices)
    members = math.gcd(k, n) if member_devices == -1 else member_devices
    if members <= 0 or k % members or n % members:
        raise config_lib.ConfigError(
            f"{members} member device(s) must divide both the {k} members and the {n} devices"
        )
    data = n // members if mesh_cfg.data == -1 else mesh_cfg.data
    if data <= 0 or members * data > n:
        raise config_lib.ConfigError(
            f"a {members} x {data} (members x data) mesh does not fit {n} devices"
        )
    return jax.make_mesh(
        (members, data),
        ("members", "data"),
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
        devices=devices[: members * data],
    )


# ----------------------------------------------------------------------------------- the loop


class _Predictions:
    """Adapter: `avemo.train.evaluate` scores predictions made for the whole population."""

    def __init__(self, results: dict[str, dict]):
        self._results = results

    def predict(self, state: Any, plan: Any) -> dict[str, dict]:  # noqa: ARG002
        return self._results


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _reconcile(ckpt: checkpointing.Checkpointer, step: int) -> None:
    """A member's checkpoints past the population's step (a save cut short) are dropped."""
    for s in ckpt.all_steps():
        if s > step:
            ckpt.delete(s)


def _fresh(population_dir: str) -> bool:
    """No population checkpoint yet (a fresh population, not a resumed one)."""
    ckpt = checkpointing.Checkpointer(population_dir, None, async_save=False)
    try:
        return ckpt.latest_step() is None
    finally:
        ckpt.close()


def train_population(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str],
    population_dir: str,
    data_order: str = "shared",
    member_conv: str = "auto",
    member_devices: int = -1,
    reports: bool = True,
) -> list[dict[str, float]]:
    """Trains K members in one program; each writes its workdir like a separate run.

    Args:
      configs: the members' configs (equal except `MEMBER_KEYS`).
      workdirs: one workdir per member.
      population_dir: where the population's own checkpoint (all members, data positions) lives.
      data_order: "shared" (one batch per step for all) or "member" (each member's own order).
      member_conv: "loop" | "vmap" | "auto" for the members' face CNNs.
      member_devices: devices on the mesh's members axis (-1: gcd(K, devices)).
      reports: write each member's evaluation report at the end (if its config asks for it).

    Returns:
      The members' last dev metrics.
    """
    if len(configs) != len(workdirs):
        raise PopulationError("one workdir per member config")
    if jax.process_count() > 1:
        raise PopulationError("population training runs in one process (devices: members axis)")
    for config in configs:
        config_lib.validate(config)
    workdirs = [os.path.abspath(w) for w in workdirs]
    population_dir = os.path.abspath(population_dir)
    os.makedirs(population_dir, exist_ok=True)
    for config, workdir in zip(configs, workdirs, strict=True):
        os.makedirs(workdir, exist_ok=True)
        tmp = os.path.join(workdir, "config.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2))
        os.replace(tmp, os.path.join(workdir, "config.json"))
    config = configs[0]
    k = len(configs)
    # The single-modality first stages of every member (avemo.warm_start: video-only, then
    # audio-only), each itself a population.
    first = [warm_start.first_stages(c) for c in configs] if _fresh(population_dir) else [[]]
    if len({tuple(subdir for subdir, _ in member) for member in first}) > 1:
        raise PopulationError("the members' first stages differ (train.*_stage_steps)")
    for index, (subdir, _) in enumerate(first[0]):
        stages = [member_stages[index][1] for member_stages in first]
        stage_dirs = [os.path.join(w, subdir) for w in workdirs]

        def stages_done(stages=stages, stage_dirs=stage_dirs) -> bool:
            return all(
                warm_start.stage_finished(d, c.train.num_steps)
                for d, c in zip(stage_dirs, stages, strict=True)
            )

        if not stages_done():
            log.info(
                "First stage: %d %s-only members, %d steps.",
                k,
                stages[0].model.mode,
                stages[0].train.num_steps,
            )
            train_population(
                stages,
                stage_dirs,
                os.path.join(population_dir, subdir),
                data_order,
                member_conv,
                member_devices,
                reports=False,
            )
            if not stages_done():
                log.info("The %s stopped early (preempted); run again to resume it.", subdir)
                return [{} for _ in configs]

    # The data is prepared once (members share the front ends and the preparation cache).
    sessions = train.load_sessions(config, workdirs[0])
    for workdir in workdirs[1:]:  # each member's normaliser, as a separate run leaves it
        src = os.path.join(workdirs[0], "normalizer.npz")
        if os.path.exists(src) and not os.path.exists(os.path.join(workdir, "normalizer.npz")):
            import shutil

            shutil.copyfile(src, os.path.join(workdir, "normalizer.npz"))
    total_steps = train.num_train_steps(config, pipeline.num_train_windows(sessions, config))
    trainer = PopulationTrainer(
        configs,
        train.example_batch(sessions, config, 1),
        total_steps,
        data_order,
        member_conv,
        member_devices,
    )
    sessions = attach_frozen_features(trainer, sessions)
    eval_sessions = [s for s in sessions if s.split in config.eval.splits and s.has_labels]
    # A small read-ahead per pipeline: Grain's default buffers 500 batches per iterator (GBs for
    # K member pipelines, or for cached frozen maps); the data order does not depend on it.
    far_field = train.far_field_inputs(config, workdirs[0], sessions)  # the same for all members
    fresh, streams = None, [None] * k
    if config.model.freeze_face_stream:  # each member's fixed stream: its states, its pipeline
        from avemo.data import frozen

        fresh = trainer.init_state(workdirs)  # the warm starts, also when resuming
        streams = [
            frozen.stream_windows(trainer.model, train.model_variables(trainer.member(fresh, m)))
            for m in range(k)
        ]
    iters = [
        iter(
            pipeline.train_dataset(
                sessions,
                c,
                read_options=READ_OPTIONS,
                silence=train.silent_window(c, workdirs[0], sessions),  # modality dropout
                far_field=far_field,
                face_stream=stream,
            )
        )
        for c, stream in zip(configs if data_order == "member" else configs[:1], streams)
    ]
    plan = pipeline.eval_plan(eval_sessions, config) if eval_sessions else None
    writers = [MetricWriter(w) for w in workdirs]
    best_metric = f"dev/{config.checkpoint.best_metric}"
    pop_ckpt = checkpointing.Checkpointer(population_dir, None, async_save=False)
    member_ckpts = (
        [checkpointing.Checkpointer(w, best_metric, config.checkpoint.async_save) for w in workdirs]
        if config.checkpoint.enabled
        else []
    )
    record = {
        "members": workdirs,
        "data_order": data_order,
        "member_conv": trainer.member_conv,
        "mesh": dict(trainer.mesh.shape),
        "shared_face": trainer.shared_face,
        "cached_face_features": "faces" not in sessions[0].arrays,
    }
    _write_json(os.path.join(population_dir, POPULATION_FILE), record)

    start_step = 0
    last_eval: list[dict[str, float]] = [{} for _ in range(k)]
    if pop_ckpt.latest_step() is not None:
        start_step = pop_ckpt.latest_step()
        state, meta = pop_ckpt.restore_matching(
            start_step, trainer.restore_target(), None, "use a new sweep root"
        )
        for it, it_state in zip(iters, meta["data"], strict=True):
            it.set_state(it_state)
        last_eval = meta["last_eval"]
        for ckpt in member_ckpts:
            _reconcile(ckpt, start_step)
        log.info("Resumed the population of %d from %s at step %d.", k, population_dir, start_step)
    else:
        state = fresh if fresh is not None else trainer.init_state(workdirs)
        params = sum(x.size for x in jax.tree.leaves(state.params)) // k
        log.info(
            "Initialised a population of %d %s models (%s parameters each) on a %s mesh; "
            "face CNN: %s; data order: %s.",
            k,
            config.model.mode,
            f"{params:,}",
            " x ".join(f"{n} {a}" for a, n in trainer.mesh.shape.items()),
            "none (cached frozen maps)"
            if "faces" not in sessions[0].arrays
            else ("shared (frozen, once for all)" if trainer.shared_face else trainer.member_conv),
            data_order,
        )
        for writer, c in zip(writers, configs, strict=True):
            writer.write_hparams(dict(train._flat_items(c)))

    metas = [{"config": json.loads(c.to_json_best_effort())} for c in configs]

    def next_batch() -> dict[str, jax.Array]:
        local = [next(it) for it in iters]
        if data_order == "member":
            local = [{key: np.stack([b[key] for b in local]) for key in local[0]}]
        return trainer.to_global(local[0])

    def save(step: int, evaluated: bool) -> None:
        pop_meta = {"data": [it.get_state() for it in iters], "last_eval": last_eval}
        pop_ckpt.save(step, state, None, pop_meta)
        for m, ckpt in enumerate(member_ckpts):
            if step in ckpt.all_steps():
                continue
            ckpt.save(
                step,
                trainer.member(state, m),
                iters[m if data_order == "member" else 0],
                metas[m],
                last_eval[m] if evaluated else None,
            )

    pending: list[tuple[int, dict]] = []
    t_start, step_start = time.time(), start_step
    step = start_step
    with train._Preemption() as preemption:
        try:
            for step in range(start_step + 1, total_steps + 1):
                state, step_metrics = trainer.train_step(
                    state, next_batch(), trainer.base_rngs, trainer.hparam_arrays
                )
                pending.append((step, step_metrics))
                last = step == total_steps
                if step % config.train.log_every_steps == 0 or last:
                    means = _drain_members(pending, k)
                    rate = (step - step_start) / max(time.time() - t_start, 1e-9)
                    for m, writer in enumerate(writers):
                        scalars = {f"train/{key}": v[m] for key, v in means.items()}
                        scalars["train/steps_per_second"] = rate
                        writer.write_scalars(step, scalars)
                    log.info(
                        "step %d/%d  loss %s  %.2f steps/s (x%d members)",
                        step,
                        total_steps,
                        " ".join(f"{x:.4f}" for x in means["loss"]),
                        rate,
                        k,
                    )
                evaluated = plan is not None and (step % config.train.eval_every_steps == 0 or last)
                if evaluated:
                    _drain_members(pending, k)
                    results = trainer.predict(state, plan)
                    for m in range(k):
                        last_eval[m] = train.evaluate(
                            _Predictions(results[m]), state, plan, eval_sessions, "dev"
                        )
                        writers[m].write_scalars(step, last_eval[m])
                stop = preemption.agreed()
                if config.checkpoint.enabled and (
                    evaluated or stop or last or step % config.train.checkpoint_every_steps == 0
                ):
                    _drain_members(pending, k)
                    save(step, evaluated)
                if stop:
                    log.warning(
                        "SIGTERM received: saved the population at step %d to %s; exiting. "
                        "Re-run the same command to resume.",
                        step,
                        population_dir,
                    )
                    break
        finally:
            for writer in writers:
                writer.flush()
                writer.close()
            for ckpt in [pop_ckpt, *member_ckpts]:
                ckpt.close()
    for m, workdir in enumerate(workdirs):
        _write_json(os.path.join(workdir, "final_metrics.json"), {"step": step, **last_eval[m]})
    if reports and step >= total_steps:
        from avemo import evaluate as evaluate_lib

        evaluate_lib.report_population(configs, workdirs)  # all members' reports in one pass
    return last_eval


def _drain_members(pending: list[tuple[int, dict]], k: int) -> dict[str, np.ndarray]:
    """Per-member means [K] of pending step metrics; a non-finite loss stops naming the member."""
    fetched = jax.device_get(pending)
    for step, m in fetched:
        bad = np.flatnonzero(~np.isfinite(m["loss"]))
        if bad.size:
            raise train.NonFiniteLossError(
                f"non-finite loss in member(s) {bad.tolist()} at step {step}; stopping. The last "
                "good population checkpoint is kept."
            )
    means = (
        {key: np.mean([np.asarray(m[key]) for _, m in fetched], axis=0) for key in fetched[0][1]}
        if fetched
        else {}
    )
    pending.clear()
    del k
    return means
