"""Frozen face branch: inference mode under stop_gradient, cached feature maps (Sec. 6.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avemo import train
from avemo.data import frozen, memory, pipeline
from avemo.models.bimodal import build_model
from configs import tiny


def _config(tmp_path, stride=1):
    c = tiny.get_config()
    c.data.cache_dir = str(tmp_path / "cache")
    c.model.freeze_video = True
    c.model.video_frame_stride = stride
    c.model.head_dropout = 0.0
    return c


def _window_batch(sessions, config, key_sessions=None, face_stride=1):
    source = pipeline.WindowSource(
        key_sessions or sessions, config.train.window_steps, 7, face_stride=face_stride
    )
    items = [source[i] for i in (0, 3, len(source) - 1)]
    return {k: jnp.asarray(np.stack([it[k] for it in items])) for k in items[0]}


def _variables(config, sessions, seed=0):
    model = build_model(config.model)
    batch = _window_batch(sessions, config)
    return model, model.init(jax.random.key(seed), batch, train=False)


@pytest.mark.parametrize("stride", [1, 3])
def test_cached_feature_maps_give_the_outputs_of_the_live_frozen_cnn(tmp_path, stride):
    config = _config(tmp_path, stride)
    sessions = memory.make_sessions(config.data.memory)
    model, variables = _variables(config, sessions)
    branch = frozen.branch_variables(variables["params"], variables["batch_stats"])
    cached = frozen.attach(sessions, config, branch)
    assert all("faces" not in s.arrays and "face_features" in s.arrays for s in cached)
    live_batch = _window_batch(sessions, config)
    cached_batch = _window_batch(cached, config)
    assert "faces" not in cached_batch
    live = model.apply(variables, live_batch, train=False)["outputs"]
    fast = model.apply(variables, cached_batch, train=False)["outputs"]
    np.testing.assert_allclose(fast, live, rtol=1e-5, atol=1e-6)
    # In training mode too (frozen branch: inference mode), with the same dropout rng.
    rngs = {"dropout": jax.random.key(3)}
    live_t, _ = model.apply(variables, live_batch, train=True, rngs=rngs, mutable=["batch_stats"])
    fast_t, _ = model.apply(variables, cached_batch, train=True, rngs=rngs, mutable=["batch_stats"])
    np.testing.assert_allclose(fast_t["outputs"], live_t["outputs"], rtol=1e-5, atol=1e-6)
    # The pipeline cuts only the maps of every s-th step, the ones the model reads.
    strided = _window_batch(cached, config, face_stride=stride)
    length = config.train.window_steps
    assert strided["face_features"].shape[1] == -(-length // stride)
    np.testing.assert_array_equal(
        strided["face_features"], cached_batch["face_features"][:, ::stride]
    )
    np.testing.assert_allclose(
        model.apply(variables, strided, train=False)["outputs"], live, rtol=1e-5, atol=1e-6
    )


def test_frozen_branch_runs_in_inference_mode_in_training(tmp_path):
    config = _config(tmp_path)
    config.model.audio_input_dropout = 0.0
    sessions = memory.make_sessions(config.data.memory)
    model, variables = _variables(config, sessions)
    # Running statistics unlike the batch's: training-mode BN would normalise differently.
    variables["batch_stats"] = jax.tree.map(lambda x: x + 0.5, variables["batch_stats"])
    batch = _window_batch(sessions, config)
    train_out, _ = model.apply(
        variables, batch, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]
    )
    eval_out = model.apply(variables, batch, train=False)
    np.testing.assert_allclose(train_out["outputs"], eval_out["outputs"], rtol=1e-5, atol=1e-6)
    # The same model unfrozen does differ in training mode (the test can fail).
    config.model.freeze_video = False
    free_out, _ = build_model(config.model).apply(
        variables, batch, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]
    )
    assert np.max(np.abs(free_out["outputs"] - eval_out["outputs"])) > 1e-4


def test_cache_rekeys_when_the_weights_change_and_is_reused_otherwise(tmp_path):
    config = _config(tmp_path)
    sessions = memory.make_sessions(config.data.memory)
    _, v0 = _variables(config, sessions, seed=0)
    _, v1 = _variables(config, sessions, seed=1)
    b0 = frozen.branch_variables(v0["params"], v0["batch_stats"])
    b1 = frozen.branch_variables(v1["params"], v1["batch_stats"])
    a = frozen.attach(sessions, config, b0)
    root = frozen.frozen_root(config)
    entries = sorted(p.name for p in root.iterdir())
    assert len(entries) == len(sessions)
    frozen.attach(sessions, config, b0)  # same weights: reused, nothing new
    assert sorted(p.name for p in root.iterdir()) == entries
    # One changed number in the batch statistics (a new stage-1 checkpoint) -> new entries.
    stats = jax.tree.map(np.asarray, b0["batch_stats"])
    stats["conv1"]["BatchNorm_0"]["mean"] = stats["conv1"]["BatchNorm_0"]["mean"] + 1.0
    c = frozen.attach(sessions, config, {"params": b0["params"], "batch_stats": stats})
    b = frozen.attach(sessions, config, b1)
    assert len(list(root.iterdir())) == 3 * len(sessions)
    name = sessions[0].name
    assert not np.allclose(a[0].arrays["face_features"], b[0].arrays["face_features"])
    assert not np.allclose(a[0].arrays["face_features"], c[0].arrays["face_features"])
    assert a[0].name == b[0].name == name


@pytest.mark.slow
def test_frozen_train_step_computes_no_branch_gradient(tmp_path):
    config = _config(tmp_path)
    config.train.grad_clip_norm = 0.0
    sessions = memory.make_sessions(config.data.memory)
    batch = _window_batch(sessions, config)
    trainer = train.Trainer(config, {k: np.asarray(v) for k, v in batch.items()}, 10)
    state = trainer.init_state()
    before = jax.device_get(state.params)
    new_state, metrics = trainer.train_step(state, trainer.to_global(batch), trainer.base_rng)
    after = jax.device_get(new_state.params)
    jax.tree.map(np.testing.assert_array_equal, after["alexnet"], before["alexnet"])
    assert not np.array_equal(after["head"]["kernel"], before["head"]["kernel"])

    # grad_norm counts the trained parameters only.
    def loss(params):
        out, _ = trainer.model.apply(
            {"params": params, "batch_stats": state_stats},
            batch,
            train=True,
            rngs={"dropout": jax.random.fold_in(trainer.base_rng, 0)},
            mutable=["batch_stats"],
        )
        return train.losses(config, out, batch)["loss"]

    state_stats = jax.device_get(trainer.init_state().batch_stats)
    grads = jax.grad(loss)(before)
    trained = {k: v for k, v in grads.items() if k != "alexnet"}
    np.testing.assert_allclose(
        metrics["grad_norm"],
        jax.tree.reduce(lambda s, g: s + float(jnp.sum(jnp.square(g))), trained, 0.0) ** 0.5,
        rtol=1e-4,
    )


@pytest.mark.slow
def test_training_on_cached_features_runs_and_keeps_the_branch(tmp_path):
    config = _config(tmp_path, stride=2)
    config.train.num_steps = 3
    config.checkpoint.async_save = False
    metrics = train.train_and_evaluate(config, str(tmp_path / "w"))
    assert np.isfinite(metrics["dev/ccc_pooled/mean"])
    assert len(list(frozen.frozen_root(config).iterdir())) == 4  # 3 train + 1 dev sessions


def test_training_windows_carry_every_sth_face_and_the_model_reads_them_alike(tmp_path):
    """Training windows cut only the crops of every s-th step (the ones the CNN sees); the live
    model gives the same outputs and gradients from them as from every step's crops, and a
    population member's face maps (`face_feature_map` with `steps`) are the same too."""
    from avemo.models.bimodal import face_feature_map

    stride = 3
    config = _config(tmp_path, stride)
    config.model.freeze_video = False
    sessions = memory.make_sessions(config.data.memory)
    model, variables = _variables(config, sessions)
    full = _window_batch(sessions, config)
    strided = _window_batch(sessions, config, face_stride=stride)
    length = config.train.window_steps
    assert full["faces"].shape[1] == length
    assert strided["faces"].shape[1] == -(-length // stride)
    np.testing.assert_array_equal(strided["faces"], full["faces"][:, ::stride])
    for key in ("face_present", "audio_features", "labels", "mask"):  # every step, as before
        np.testing.assert_array_equal(strided[key], full[key])
    rngs = {"dropout": jax.random.key(3)}

    def loss(params, batch):
        out, _ = model.apply(
            {**variables, "params": params}, batch, train=True, rngs=rngs, mutable=["batch_stats"]
        )
        return jnp.sum(out["outputs"] ** 2), out["outputs"]

    (l_full, o_full), g_full = jax.value_and_grad(loss, has_aux=True)(variables["params"], full)
    (l_str, o_str), g_str = jax.value_and_grad(loss, has_aux=True)(variables["params"], strided)
    np.testing.assert_allclose(o_str, o_full, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_str), jax.tree.leaves(g_full), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    alex = {c: v["alexnet"] for c, v in variables.items() if "alexnet" in v}
    maps_full, _ = face_feature_map(model, alex, full["faces"], False)
    maps_str, _ = face_feature_map(model, alex, strided["faces"], False, steps=length)
    np.testing.assert_array_equal(maps_str, maps_full)
    # evaluation windows keep every step's crops
    plan = pipeline._cut(sessions[0], 0, length, None, 0.04, stride)
    assert plan["faces"].shape[0] == length


def test_a_face_dropped_window_of_cached_maps_gets_the_cnns_map_of_no_face(tmp_path):
    """Modality dropout on cached maps: the frozen CNN's map of a blank crop, as the live CNN
    computes from the zero crops that `remove_face` (and a step without a face) gives -- not zero
    maps, which the model never sees at test time."""
    from avemo.data import augment

    config = _config(tmp_path, stride=2)
    sessions = memory.make_sessions(config.data.memory)
    model, variables = _variables(config, sessions)
    # trained-looking weights: a fresh CNN (zero biases, BN mean 0) maps a blank crop to zeros
    variables = jax.tree.map(lambda x: x * 1.3 + 0.01, variables)
    branch = frozen.branch_variables(variables["params"], variables["batch_stats"])
    cached = frozen.attach(sessions, config, branch)
    live_source = pipeline.WindowSource(sessions, config.train.window_steps, 7, face_stride=2)
    source = pipeline.WindowSource(cached, config.train.window_steps, 7, face_stride=2)
    assert live_source.faceless() == {}
    faceless = source.faceless()
    drop = augment.ModalityDropout(0.99, {"speech_energy": np.zeros(1)}, faceless)
    for seed in range(20):
        out = drop(source[4], np.random.default_rng(seed))
        live = drop(live_source[4], np.random.default_rng(seed))  # the same choice
        if out["face_present"].any():
            continue
        assert not np.any(live["faces"])  # the live window: zero crops
        blank = np.broadcast_to(faceless["face_features"], out["face_features"].shape)
        np.testing.assert_array_equal(out["face_features"], blank)
        assert np.any(blank)
        batch = {k: jnp.asarray(v[None]) for k, v in out.items()}
        live_batch = {k: jnp.asarray(v[None]) for k, v in live.items()}
        np.testing.assert_allclose(
            model.apply(variables, batch, train=False)["outputs"],
            model.apply(variables, live_batch, train=False)["outputs"],
            rtol=1e-5,
            atol=1e-6,
        )
        return
    raise AssertionError("no face-removed window drawn")
