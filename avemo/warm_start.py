"""Warm start of the fusion's face stream from a trained video-only model (`model.face_init`).

Why (issue 9, docs/fusion.md): trained end to end, the fusion's face stream learns less than the
video-only model does on its own -- the voice explains most of the main loss early, and the face
stream's share of the gradient is small. The paper trains the face CNN first (Sec. 6.4, stage 1,
`model.video_init`), but per frame: its features carry little of what the sequence model reads
(stage-1 dev CCC 0.33 arousal on the embedded corpus). `face_init` goes one step further: it
starts the whole face stream of the fusion from a video-only run (`model.mode="video"`), whose
layers are, one for one, the face tower of the fusion:

  video-only model                       fusion (face tower)
  alexnet                           ->   alexnet
  video_lstm  (Dense -> ReLU -> LSTM) ->   face_lstm  (needs face_lstm_dense_features = the video
                                          run's audio_dense_features)
  attention   (queried by video_lstm) ->   attention  (queried by face_lstm: attention_query="face")
  output_lstm                       ->   face_context_lstm
  head                              ->   video_head  (the face head of modality_heads)

and `face_memory` (the fusion's projection of the face state into c_t, which the video-only
model does not have) starts at zero. With `attention_query = "audio+face"` (the query
[h_t; v_t]) the voice's rows of the attention's W_g start at zero too (`_widen_query`). At
initialisation the fusion's face head therefore computes exactly the video-only model's output
(tested); training then goes on end to end, every layer trainable. The audio stream, the gate,
the fusion's output LSTM and head keep their seeded initialisation.

`model.audio_init` does the same for the voice: the fusion's audio stream (`audio_lstm`, its Dense
and LSTM, and `audio_cnn` if enabled) starts from an audio-only run (`model.mode="audio"`), whose
layers of those names are the same; the audio-only model's output LSTM and head read its h_t
alone and have no counterpart. Why: trained jointly, the fusion's voice reads arousal worse than
the audio-only model at the same step count (docs/fusion.md).

`face_init` (`audio_init`) is a workdir of a video-only (audio-only) run (its best-by-dev
checkpoint is loaded); `{seed}` in it is replaced by the run's `seed`, so each seed of a sweep
starts from the run of the same seed (e.g. `runs/video/seed={seed}`), and `{workdir}` by the
run's own workdir.

`train.face_stage_steps` > 0 makes that video-only run the first stage of the same command:
`avemo.train.train_and_evaluate` (and `avemo.population.train_population`, member by member)
first trains `stage_config(config)` -- this config as the video-only model of
`configs/fusion_ablation.py:video`, for `face_stage_steps` steps, same seed -- in
`WORKDIR/face_stage/` (an ordinary, resumable workdir; dev selects its checkpoint; no report),
then the fusion from it. A resumed fusion run skips the stage.

`train.audio_stage_steps` > 0 does the same for the voice (`audio_stage_config`: the audio-only
model of `configs/fusion_ablation.py:audio`, in `WORKDIR/audio_stage/`), after the face stage.
With both stages of N steps and N fusion steps, each stream is trained for 2N steps, as long as
each single-modality model of the ablation (900 audio-only steps for 3 members, data
preparation and evaluation included: 88 s on 2 CPU cores, about a tenth of the default's run).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from avemo import checkpointing
from avemo import config as config_lib

log = logging.getLogger("avemo")

# (video-only module, fusion module): the fusion's face tower, layer for layer.
FACE_STREAM_MAP = (
    ("alexnet", "alexnet"),
    ("video_lstm", "face_lstm"),
    ("attention", "attention"),
    ("output_lstm", "face_context_lstm"),
    ("head", "video_head"),
)
# (audio-only module, fusion module): the fusion's audio stream (model.audio_init).
AUDIO_STREAM_MAP = (("audio_lstm", "audio_lstm"), ("audio_cnn", "audio_cnn"))
ZEROED = ("face_memory",)  # fusion-only: starts at zero, so c_t is the video-only model's context
STAGE_DIR = "face_stage"  # under the fusion's workdir: the video-only first stage
AUDIO_STAGE_DIR = "audio_stage"  # under the fusion's workdir: the audio-only first stage


def resolve(template: str, seed: int, workdir: str = "", key: str = "face_init") -> str:
    """The workdir `template` (config.model.`key`) names for `seed` and the run's `workdir`."""
    try:
        path = template.format(seed=seed, workdir=workdir)
    except (KeyError, IndexError, ValueError) as err:
        raise config_lib.ConfigError(
            f"config.model.{key}={template!r}: only the placeholders {{seed}} and "
            f"{{workdir}} are allowed ({err})"
        ) from None
    return os.path.abspath(os.path.expanduser(path))


def _single_modality(
    config: ml_collections.ConfigDict, mode: str, steps: int
) -> ml_collections.ConfigDict:
    """`config` as the `mode`-only model of `configs/fusion_ablation.py` for `steps` steps: no
    fusion remedy, nothing to drop, no stage or warm start of its own, no report at the end
    (python -m avemo.evaluate --workdir W/<stage>: its report); the widths, the optimiser, the
    data and the evaluation as the fusion has them."""
    c = copy.deepcopy(config)
    c.model.mode = mode
    c.model.modality_heads = False
    c.model.output_residual = False
    c.model.gate_per_output = False
    c.model.fusion_level = "features"
    c.model.gate_inputs = "states"
    c.model.video_lstm_features = 0
    c.model.face_lstm_dense_features = 0
    c.model.face_context_lstm = False
    c.model.attention_query = "audio"  # video mode: the query is the video LSTM's own state
    c.model.face_init = ""
    c.model.audio_init = ""
    c.model.freeze_face_stream = False  # the stage trains the stream the fusion may keep fixed
    c.train.modality_dropout = 0.0
    c.train.num_steps = steps
    c.train.face_stage_steps = 0
    c.train.audio_stage_steps = 0
    c.train.face_init_lr_scale = 1.0  # the stage is the stream's own training
    c.train.stage_schedule = "restart"
    c.postprocess.face_weight = False  # one stream: no head beside the output to weigh
    c.postprocess.voice_weight = False
    c.eval.report_at_end = False
    return c


def stage_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The video-only first stage of `config` (`train.face_stage_steps` steps, same seed).

    The single-modality settings of `configs/fusion_ablation.py:video` (tested equal, save the
    schedule's length under a continued `train.stage_schedule`: the stage then runs the first
    face_stage_steps of one schedule over the stage and the fusion): the face stream alone,
    nothing to drop or to hear from afar; the face CNN, the LSTM and attention widths, the
    optimiser, the data and the evaluation as the fusion has them.
    """
    c = _single_modality(config, "video", config.train.face_stage_steps)
    c.train.far_field_augment = 0.0
    # The first steps of one schedule over both -- unless the fusion keeps the stream fixed
    # (`model.freeze_face_stream`): nothing continues it, so the stage anneals on its own.
    if config.train.stage_schedule != "restart" and not config.model.freeze_face_stream:
        c.train.schedule_steps = config.train.face_stage_steps + config.train.num_steps
    return config_lib.validate(c)


def audio_stage_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The audio-only first stage of `config` (`train.audio_stage_steps` steps, same seed).

    The single-modality settings of `configs/fusion_ablation.py:audio` (tested equal): the voice
    alone (with the fusion's far-field augmentation and audio front end), nothing to drop, the
    audio-only model's own input dropout (`train.audio_stage_input_dropout`); the LSTM widths,
    the optimiser, the data and the evaluation as the fusion has them.
    """
    c = _single_modality(config, "audio", config.train.audio_stage_steps)
    c.model.audio_input_dropout = config.train.audio_stage_input_dropout
    return config_lib.validate(c)


def first_stages(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(subdirectory, config) of each single-modality first stage a fresh fusion run trains
    before the fusion: the face stage (`train.face_stage_steps`), then the audio stage
    (`train.audio_stage_steps`); none for a run without them."""
    stages = []
    if config.train.face_stage_steps:
        stages.append((STAGE_DIR, stage_config(config)))
    if config.train.audio_stage_steps:
        stages.append((AUDIO_STAGE_DIR, audio_stage_config(config)))
    return stages


def stage_finished(workdir: str, steps: int) -> bool:
    """The stage in `workdir` ran all its `steps` (its final metrics are at that step)."""
    path = os.path.join(workdir, "final_metrics.json")
    if not os.path.exists(path):
        return False
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("step", -1) >= steps


def face_source(config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """The video-only run a fresh fusion run in `workdir` starts its face stream from, if any."""
    if config.model.face_init:
        return resolve(config.model.face_init, config.seed, workdir)
    if config.train.face_stage_steps:
        return os.path.join(os.path.abspath(workdir), STAGE_DIR)
    return None


def audio_source(config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """The audio-only run a fresh fusion run in `workdir` starts its audio stream from, if any."""
    if config.model.audio_init:
        return resolve(config.model.audio_init, config.seed, workdir, key="audio_init")
    if config.train.audio_stage_steps:
        return os.path.join(os.path.abspath(workdir), AUDIO_STAGE_DIR)
    return None


def load_streams(
    config: ml_collections.ConfigDict,
    workdir: str,
    params: Mapping[str, Any],
    batch_stats: Mapping[str, Any],
) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """A fresh fusion run's (params, batch_stats) with the streams its config starts from: the
    face stream of `face_source` (face_init or the face stage) and the audio stream of
    `audio_source` (audio_init). Unchanged when it names neither."""
    face = face_source(config, workdir)
    if face:
        params, batch_stats = load_face_stream(params, batch_stats, face)
    audio = audio_source(config, workdir)
    if audio:
        params, batch_stats = load_audio_stream(params, batch_stats, audio)
    return params, batch_stats


def _restore_run(
    workdir: str, mode: str = "video", key: str = "face_init"
) -> tuple[dict, dict, int]:
    """(params, batch_stats, step) of the best-by-dev checkpoint of a `mode`-only run."""
    from avemo import inference

    try:
        saved_config = inference.load_config(workdir)
        step = inference.checkpoint_step(workdir, saved_config, "best")
    except inference.NoModelError as err:
        raise config_lib.ConfigError(
            f"config.model.{key}: {err} (a finished {mode}-only run's workdir is needed)"
        ) from None
    if saved_config.model.mode != mode:
        raise config_lib.ConfigError(
            f"config.model.{key}={workdir!r} is a model.mode={saved_config.model.mode!r} "
            f"run; the stream starts from a {mode}-only run (model.mode={mode!r})"
        )
    ckpt = checkpointing.Checkpointer(workdir, f"dev/{saved_config.checkpoint.best_metric}")
    try:
        saved = ckpt.restore_untyped(step)
    finally:
        ckpt.close()
    return dict(saved["params"]), dict(saved.get("batch_stats") or {}), step


def _widen_query(src_attention: Mapping[str, Any], dst_attention: Mapping[str, Any]) -> dict:
    """The video-only attention's parameters for a fusion attention queried by [h_t; v_t].

    With `model.attention_query = "audio+face"` the fusion's W_g (the query projection of
    Eq. 28) reads [h_t; v_t] (the voice's state first, as `BimodalModel._attention_query` joins
    them), the video-only model's reads its video LSTM's state only. The face rows of the
    fusion's W_g take the video-only W_g and the voice rows start at zero, so at initialisation
    the query -- and the face context c_t -- is the video-only model's; the voice can then learn
    to steer which face regions are pooled. Any other shape is left as it is (and a mismatch is
    then reported by the caller).
    """
    src = dict(src_attention)
    if "W_g" not in src or "W_g" not in dst_attention:
        return src
    kernel, want = np.asarray(src["W_g"]["kernel"]), dst_attention["W_g"]["kernel"].shape
    extra = want[0] - kernel.shape[0]
    if extra > 0 and kernel.shape[1:] == tuple(want[1:]):
        voice = np.zeros((extra,) + kernel.shape[1:], kernel.dtype)
        src["W_g"] = {**src["W_g"], "kernel": np.concatenate([voice, kernel], 0)}
    return src


def _placed(source: Any, target: Any, where: str, there: str) -> Any:
    """`source`'s arrays on the dtypes and shardings of `target`'s, which must have its shapes.

    Raises:
      ConfigError: "{where}{first differing leaf} is {shape} there and {shape} in {there}".
    """
    from avemo.stage1 import tree_shapes

    want, have = tree_shapes(target), tree_shapes(source)
    if want != have:
        key = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))[0]
        raise config_lib.ConfigError(
            f"{where}{key} is {have.get(key, 'missing')} there and "
            f"{want.get(key, 'missing')} in {there}"
        )
    return jax.tree.map(
        lambda x, t: jax.device_put(np.asarray(x, t.dtype), t.sharding), source, target
    )


def load_face_stream(
    params: Mapping[str, Any], batch_stats: Mapping[str, Any], workdir: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fusion's (params, batch_stats) with the face stream of the video-only run `workdir`.

    Arrays are placed on the shardings of the arrays they replace; every other entry is kept.

    Raises:
      ConfigError: no such run, not a video-only run, or a layer whose shapes differ (naming it).
    """
    src_params, src_stats, step = _restore_run(workdir)
    new_params, new_stats = dict(params), dict(batch_stats or {})
    for src, dst in FACE_STREAM_MAP:
        if dst not in params:
            raise config_lib.ConfigError(
                f"config.model.face_init: the fusion model has no {dst!r} layer (face_init needs "
                "model.mode='fusion', video_lstm_features > 0, face_context_lstm=True and "
                "modality_heads=True)"
            )
        if src not in src_params:
            raise config_lib.ConfigError(
                f"config.model.face_init={workdir!r}: the video-only run has no {src!r} layer"
            )
        for kind, source, target in (
            ("params", src_params, new_params),
            ("batch_stats", src_stats, new_stats),
        ):
            if dst not in target and src not in source:
                continue
            src_tree = source.get(src, {})
            if kind == "params" and dst == "attention":
                src_tree = _widen_query(src_tree, target.get(dst, {}))
            target[dst] = _placed(
                src_tree,
                target.get(dst, {}),
                f"config.model.face_init={workdir!r}: {kind} {src}",
                f"the fusion's {dst} (the face tower must be as wide as the video-only model: "
                "video_lstm_features = lstm_features, face_lstm_dense_features = "
                "audio_dense_features, the same alexnet sizes and face size)",
            )
    for name in ZEROED:
        if name in new_params:
            new_params[name] = jax.tree.map(jax.numpy.zeros_like, new_params[name])
    log.info("Face stream initialised from %s (video-only run, step %d).", workdir, step)
    return new_params, new_stats


def load_audio_stream(
    params: Mapping[str, Any], batch_stats: Mapping[str, Any], workdir: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fusion's (params, batch_stats) with the audio stream of the audio-only run `workdir`.

    Raises:
      ConfigError: no such run, not an audio-only run, or a layer whose shapes differ (naming
        it: the audio features, `audio_dense_features` and `lstm_features` must match).
    """
    src_params, _, step = _restore_run(workdir, "audio", "audio_init")
    new_params = dict(params)
    for src, dst in AUDIO_STREAM_MAP:
        if (src in src_params) != (dst in params):
            raise config_lib.ConfigError(
                f"config.model.audio_init={workdir!r}: {src!r} is in only one of the audio-only "
                "run and this fusion model (model.audio_cnn.enabled must match)"
            )
        if dst not in params:
            continue
        new_params[dst] = _placed(
            src_params[src],
            params[dst],
            f"config.model.audio_init={workdir!r}: params {src}",
            f"the fusion's {dst} (the same audio features, audio_dense_features and "
            "lstm_features are needed)",
        )
    log.info("Audio stream initialised from %s (audio-only run, step %d).", workdir, step)
    return new_params, dict(batch_stats or {})
