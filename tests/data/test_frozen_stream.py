"""`model.freeze_face_stream`: the whole face stream kept fixed, its states computed once per
training window (`avemo.data.frozen.stream_windows`) and carried by the pipeline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avemo import config as config_lib
from avemo import train, warm_start
from avemo.data import augment, frozen, memory, pipeline
from avemo.models.bimodal import FACE_STREAM_KEYS, FROZEN_FACE_STREAM
from tests.models.test_face_init import (
    _fusion_config,
    assert_resume_skips_stage,
    started_from_stage,
)


def _config(stride=2):
    c = _fusion_config()  # the tiny face tower that mirrors the video-only model
    c.model.gate_inputs = "states+availability"
    c.model.gate_per_output = True
    c.model.video_frame_stride = stride
    c.model.freeze_face_stream = True
    c.train.face_stage_steps = 3
    c.train.grad_clip_norm = 0.0
    return config_lib.validate(c)


def _setup(config):
    sessions = [
        pipeline.delay_targets(s, config.data.label_delay_steps)
        for s in memory.make_sessions(config.data.memory)
        if s.split == "train"
    ]
    source = pipeline.WindowSource(
        sessions, config.train.window_steps, 7, face_stride=config.model.video_frame_stride
    )
    example = {k: np.stack([source[0][k]]) for k in source[0]}
    trainer = train.Trainer(config, example, 10)
    state = trainer.init_state()
    # Trained-looking stream weights (the face memory a warm start leaves at zero is not).
    params = jax.tree.map(lambda x: x * 1.3 + 0.01, jax.device_get(state.params))
    state = state.replace(params=params)
    return trainer, state, source


def _batch(windows):
    return {k: np.stack([w[k] for w in windows]) for k in windows[0]}


def test_cached_states_train_as_the_live_frozen_stream():
    config = _config()
    trainer, state, source = _setup(config)
    indices = [0, 3, 5, len(source) - 1, 1, 2, 4, 6]
    live = _batch([source[i] for i in indices])
    states, faceless = frozen.stream_windows(trainer.model, train.model_variables(state))(source)
    assert set(states) == set(FACE_STREAM_KEYS) == set(faceless)
    assert states["face_stream"].shape == (len(source), config.train.window_steps, 16)
    source.set_face_stream(states)
    cached = _batch([source[i] for i in indices])
    assert "faces" not in cached and "face_features" not in cached
    for key in ("audio_features", "labels", "face_present", "mask"):
        np.testing.assert_array_equal(cached[key], live[key])

    # The same outputs in a training-mode forward pass (same dropout rng) ...
    variables = train.model_variables(state)
    rngs = {"dropout": jax.random.key(5)}
    out_live, _ = trainer.model.apply(
        variables, live, train=True, rngs=rngs, mutable=["batch_stats"]
    )
    out_cached, _ = trainer.model.apply(
        variables, cached, train=True, rngs=rngs, mutable=["batch_stats"]
    )
    for key in ("outputs", "audio_gate", "audio_outputs", "video_outputs"):
        np.testing.assert_allclose(out_cached[key], out_live[key], rtol=1e-5, atol=1e-6)

    # ... and the same train step: the fixed stream unchanged, the rest updated alike.
    before = jax.device_get(state.params)
    after = {}
    for name, batch in (("live", live), ("cached", cached)):
        s, metrics = trainer.train_step(
            jax.tree.map(jnp.array, state), trainer.to_global(batch), trainer.base_rng
        )
        after[name] = (jax.device_get(s.params), jax.device_get(metrics))
    for module in FROZEN_FACE_STREAM:
        jax.tree.map(np.testing.assert_array_equal, after["cached"][0][module], before[module])
        jax.tree.map(np.testing.assert_array_equal, after["live"][0][module], before[module])
    trained = [k for k in before if k not in FROZEN_FACE_STREAM]
    assert {"audio_lstm", "gate", "output_lstm_0", "output_lstm_1", "audio_head"} <= set(trained)
    for module in trained:
        for a, b in zip(
            jax.tree.leaves(after["cached"][0][module]),
            jax.tree.leaves(after["live"][0][module]),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(after["cached"][0]["gate"]), jax.tree.leaves(before["gate"])
        )
    ]
    assert all(changed)
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(after["cached"][1][key], after["live"][1][key], rtol=1e-5)


def test_a_window_whose_face_is_dropped_carries_the_streams_faceless_states():
    config = _config()
    trainer, state, source = _setup(config)
    states, faceless = frozen.stream_windows(trainer.model, train.model_variables(state))(source)
    # The live stream on a face-removed window: the same for any window.
    apply = jax.jit(lambda b: trainer.model.apply(train.model_variables(state), b, train=False))
    for i in (1, len(source) - 1):
        out = apply(_batch([augment.remove_face(source[i])]))
        for key in FACE_STREAM_KEYS:
            np.testing.assert_allclose(out[key][0], faceless[key], rtol=1e-5, atol=1e-6)
    assert not np.allclose(faceless["face_stream"], states["face_stream"][1])
    source.set_face_stream(states)
    drop = augment.ModalityDropout(0.99, {"speech_energy": np.zeros(1)}, faceless)
    seen = 0
    for seed in range(40):
        window = source[2]
        out = drop(window, np.random.default_rng(seed))
        if out["face_present"].any():  # kept, or the voice silenced
            np.testing.assert_array_equal(out["face_stream"], states["face_stream"][2])
            continue
        seen += 1  # face removed: the stream's faceless states, the flag n = 0
        for key in FACE_STREAM_KEYS:
            np.testing.assert_array_equal(out[key], faceless[key])
        np.testing.assert_array_equal(out["audio_features"], window["audio_features"])
    assert seen > 5


def test_freeze_face_stream_is_validated_and_off_in_its_stage():
    config = _config()
    config.train.stage_schedule = "face_continued"
    stage = warm_start.stage_config(config)
    assert not stage.model.freeze_face_stream
    # nothing continues a fixed stream's schedule: the stage anneals over its own steps
    assert stage.train.schedule_steps == 0 and stage.train.num_steps == 3
    c = _config()
    c.train.face_stage_steps = 0
    with pytest.raises(config_lib.ConfigError, match="face_stage_steps > 0 or model.face_init"):
        config_lib.validate(c)
    c = _config()
    c.model.attention_query = "audio+face"
    with pytest.raises(config_lib.ConfigError, match="attention_query='face'"):
        config_lib.validate(c)


def test_a_population_with_fixed_streams_needs_the_members_own_data_order():
    from avemo import population

    with pytest.raises(population.PopulationError, match="--data-order member"):
        population.PopulationTrainer([_config()], {"x": np.zeros((1, 4))}, 10)


@pytest.mark.slow
def test_a_population_keeps_each_members_own_stream(tmp_path):
    from avemo import population

    configs = []
    for seed in (0, 1):
        c = _config()
        c.seed = seed
        c.train.modality_dropout = 0.5
        # SGD: a step's change follows its gradient (Adam's first steps move every parameter by
        # ~ the rate, whatever the gradient, so rounding in the stages would not be told apart
        # from a member trained on another member's states)
        c.train.optimizer = "sgd"
        c.train.learning_rate = 0.05
        configs.append(c)
    members = [str(tmp_path / f"seed={c.seed}") for c in configs]
    results = population.train_population(
        configs, members, str(tmp_path / "_p"), data_order="member"
    )
    assert all(np.isfinite(r["dev/ccc_pooled/mean"]) for r in results)
    streams = []
    for member in members:  # its own face stage's stream, unchanged through the fusion
        stage = started_from_stage(member, warm_start.STAGE_DIR, "face_lstm", "video_lstm")
        started_from_stage(member, warm_start.STAGE_DIR, "alexnet", "alexnet")
        streams.append(np.ravel(jax.tree.leaves(stage.state.params["video_lstm"])[0]))
    assert not np.allclose(streams[0], streams[1])  # each member its own seed's stage
    # Member 1 trained on its own stream's states: as the separate run of its seed does.
    from avemo.inference import load

    alone = tmp_path / "alone"
    train.train_and_evaluate(configs[1], str(alone))
    ours, theirs = (load(str(w), which="latest").state.params for w in (members[1], alone))
    for module in ("gate", "output_lstm_1", "audio_lstm"):
        for a, b in zip(
            jax.tree.leaves(ours[module]), jax.tree.leaves(theirs[module]), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_training_keeps_the_face_stages_stream_and_resumes(tmp_path):
    config = _config()
    config.train.modality_dropout = 0.5
    workdir = tmp_path / "w"
    metrics = train.train_and_evaluate(config, str(workdir))
    assert np.isfinite(metrics["dev/ccc_pooled/mean"])
    for module in FROZEN_FACE_STREAM[:3] + FROZEN_FACE_STREAM[4:]:  # the stage's layers, kept
        stage_layer = dict((f, v) for v, f in warm_start.FACE_STREAM_MAP)[module]
        started_from_stage(workdir, warm_start.STAGE_DIR, module, stage_layer)
    config.train.num_steps += 2  # resumed: the same stream, the stage not trained again
    assert_resume_skips_stage(config, workdir, warm_start.STAGE_DIR)
    started_from_stage(workdir, warm_start.STAGE_DIR, "face_lstm", "video_lstm")


def test_the_recipes_config_is_the_default_with_the_stream_fixed():
    from configs import default, fixed_stream

    recipe = config_lib.validate(fixed_stream.get_config())
    base = default.get_config()
    assert recipe.model.freeze_face_stream and not base.model.freeze_face_stream
    flat_base = base.to_dict()
    differing = {
        (section, key)
        for section, values in recipe.to_dict().items()
        if isinstance(values, dict)
        for key, value in values.items()
        if flat_base[section][key] != value
    }
    assert differing == {("model", "freeze_face_stream")}


@pytest.mark.slow
def test_a_fixed_stream_from_an_existing_video_only_run(tmp_path):
    """`model.face_init` instead of a face stage: one video-only run serves many fusion runs."""
    from tests.models.test_face_init import _video_config

    video = tmp_path / "video"
    train.train_and_evaluate(_video_config(), str(video))
    config = _config()
    config.train.face_stage_steps = 0
    config.model.face_init = str(video)
    config = config_lib.validate(config)
    workdir = tmp_path / "fusion"
    metrics = train.train_and_evaluate(config, str(workdir))
    assert np.isfinite(metrics["dev/ccc_pooled/mean"])
    for module in ("alexnet", "face_lstm", "attention", "face_context_lstm", "video_head"):
        stage_layer = dict((f, v) for v, f in warm_start.FACE_STREAM_MAP)[module]
        started_from_stage(workdir, "../video", module, stage_layer)
