"""The composed model: shapes, modes, the gate of Eq. (30) and attention of Eq. (28-29)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from avemo.models.attention import AudioGate, SpatialAttention, fuse
from avemo.models.audio_cnn import AudioCNN
from avemo.models.bimodal import BimodalModel


def _batch(b=2, length=5, size=16, dim=6):
    rng = np.random.default_rng(0)
    return {
        "faces": rng.integers(0, 255, (b, length, size, size, 1)).astype(np.uint8),
        "audio_features": rng.standard_normal((b, length, dim)).astype(np.float32),
        "spectrogram": rng.standard_normal((b, length, 12, 12)).astype(np.float32),
    }


# A model small enough for a unit test (each test adds its mode and what it varies).
SMALL = dict(
    conv_features=(4, 4, 4),
    fc_features=(8, 8),
    lstm_features=8,
    audio_dense_features=8,
    attention_features=8,
)


@pytest.mark.parametrize("mode", ["fusion", "audio", "video"])
def test_modes_give_per_step_outputs(mode):
    model = BimodalModel(
        mode=mode,
        conv_features=(4, 8, 8),
        fc_features=(8, 8),
        lstm_features=8,
        audio_dense_features=8,
        attention_features=8,
        output_lstm_features=8,
        use_audio_cnn=True,
        audio_cnn_features=(2, 4, 4),
        audio_cnn_output_features=8,
    )
    batch = _batch()
    variables = model.init(jax.random.key(0), batch)
    out = model.apply(variables, batch)
    assert out["outputs"].shape == (2, 5, 2)
    assert ("audio_gate" in out) == (mode == "fusion")
    if mode != "audio":
        assert out["attention"].shape == (2, 5, 4)  # 16 / 2^3 = 2 -> 2x2 positions
        np.testing.assert_allclose(out["attention"].sum(-1), 1.0, rtol=1e-5)
    if mode == "fusion":
        assert np.all((out["audio_gate"] > 0) & (out["audio_gate"] < 1))


def test_attention_matches_eq_28_29_computed_by_hand():
    fmap = jax.random.normal(jax.random.key(0), (1, 2, 3, 4))
    query = jax.random.normal(jax.random.key(1), (1, 2, 5))
    att = SpatialAttention(attention_features=6, context_features=7)
    params = att.init(jax.random.key(2), fmap, query)["params"]
    context, weights = att.apply({"params": params}, fmap, query)
    W, Wg, wh, Wv = (params[k] for k in ("W", "W_g", "w_h", "W_v"))
    scores = np.tanh(fmap @ W["kernel"] + W["bias"] + (query @ Wg["kernel"])[:, :, None, :])
    scores = (scores @ wh["kernel"])[..., 0]
    a = np.exp(scores - scores.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    c = np.einsum("blk,blkc->blc", a, fmap)  # Eq. (29) on F itself ...
    np.testing.assert_allclose(weights, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(context, c @ Wv["kernel"] + Wv["bias"], rtol=1e-4, atol=1e-5)


def test_fuse_is_eq_30_and_gate_modes():
    h, c = jnp.ones((1, 3, 2)), jnp.zeros((1, 3, 2))
    beta = jnp.array([[0.0, 0.25, 1.0]])
    np.testing.assert_allclose(fuse(h, c, beta)[0, :, 0], [0.0, 0.25, 1.0])
    # "concat": the same gated streams side by side, [beta h; (1 - beta) c].
    h2, c2 = 2.0 * jnp.ones((1, 3, 2)), 3.0 * jnp.ones((1, 3, 4))
    side = fuse(h2, c2, beta, "concat")
    assert side.shape == (1, 3, 6)
    np.testing.assert_allclose(side[0, :, 0], 2.0 * np.array([0.0, 0.25, 1.0]))
    np.testing.assert_allclose(side[0, :, 2], 3.0 * np.array([1.0, 0.75, 0.0]))
    with pytest.raises(ValueError, match="combine"):
        fuse(h, c, beta, "product")
    fixed = AudioGate(mode="fixed", fixed_value=0.3)
    assert fixed.init(jax.random.key(0), h, c) == {}
    np.testing.assert_allclose(fixed.apply({}, h, c), 0.3)
    scalar = AudioGate(mode="scalar")
    v = scalar.init(jax.random.key(0), h, c)
    np.testing.assert_allclose(scalar.apply(v, h, c), 0.5)  # sigmoid(0)


def test_audio_cnn_keeps_spatial_size_same_padding_stride_one_pools():
    cnn = AudioCNN(output_features=3)
    x = jnp.zeros((2, 120, 120))
    variables = cnn.init(jax.random.key(0), x)
    _, state = cnn.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    shapes = [state["intermediates"][f"Conv_{i}"]["__call__"][0].shape for i in range(3)]
    assert shapes == [(2, 120, 120, 4), (2, 120, 120, 16), (2, 120, 120, 32)]
    kernels = [variables["params"][f"Conv_{i}"]["kernel"].shape for i in range(3)]
    assert kernels == [(2, 2, 1, 4), (3, 3, 4, 16), (3, 3, 16, 32)]


def test_video_frame_stride_runs_the_cnn_on_every_stride_th_step_only():
    kwargs = dict(SMALL, mode="video", output_lstm_features=0)
    batch = _batch(length=7)
    strided = BimodalModel(video_frame_stride=3, **kwargs)
    variables = strided.init(jax.random.key(0), batch)
    out, state = strided.apply(
        variables, batch, capture_intermediates=True, mutable=["intermediates"]
    )
    frames = state["intermediates"]["alexnet"]["__call__"][0]["feature_map"].shape[0]
    assert frames == 2 * 3  # batch 2 x steps {0, 3, 6}
    # Faces between the strided steps do not matter; a face at a strided step does.
    changed = dict(batch, faces=batch["faces"].copy())
    changed["faces"][:, [1, 2, 4, 5]] = 0
    np.testing.assert_array_equal(strided.apply(variables, changed)["outputs"], out["outputs"])
    changed["faces"][:, 3] = 0
    assert not np.allclose(strided.apply(variables, changed)["outputs"], out["outputs"])
    full = BimodalModel(video_frame_stride=1, **kwargs)
    assert full.apply(variables, batch)["outputs"].shape == out["outputs"].shape


def test_audio_input_dropout_acts_in_training_only():
    model = BimodalModel(
        mode="audio",
        lstm_features=8,
        audio_dense_features=8,
        output_lstm_features=0,
        head_dropout=0.0,
        audio_input_dropout=0.5,
    )
    batch = _batch()
    variables = model.init(jax.random.key(0), batch)
    plain = BimodalModel(
        mode="audio",
        lstm_features=8,
        audio_dense_features=8,
        output_lstm_features=0,
        head_dropout=0.0,
    )
    np.testing.assert_array_equal(
        model.apply(variables, batch)["outputs"], plain.apply(variables, batch)["outputs"]
    )
    trained = model.apply(variables, batch, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(trained["outputs"], plain.apply(variables, batch)["outputs"])


def test_face_cnn_in_chunks_gives_the_same_evaluation_outputs():
    """`eval.face_chunk_frames`: the inference CNN over frames in chunks (the last one padded)
    equals the CNN over all frames at once, through the whole evaluation step."""
    from avemo import train
    from avemo.models.bimodal import face_chunk_frames

    model = BimodalModel(mode="fusion", output_lstm_features=8, video_frame_stride=2, **SMALL)
    batch = _batch(b=3, length=9)  # 3 windows x 5 strided steps = 15 frames
    batch["mask"] = np.ones((3, 9), np.float32)
    variables = model.init(jax.random.key(0), batch)
    state = train.TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=optax.identity(),
        batch_stats=variables["batch_stats"],
    )
    whole = train.eval_step(state, batch, model, chunk_setting=0)
    for chunk in (1, 4, 7, 15, 40):
        chunked = train.eval_step(state, batch, model, chunk_setting=chunk)
        for key in whole:
            np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-5, atol=1e-6)
    # Auto: the paper's 224x224x3 faces through 96 stride-2 filters go ~100 frames at a time.
    paper = BimodalModel(conv_features=(96, 256, 384), conv_strides=(2, 1, 1))
    assert 100 <= face_chunk_frames(paper, (224, 224, 3), -1) < 120
    assert face_chunk_frames(paper, (224, 224, 3), 0) == 0
