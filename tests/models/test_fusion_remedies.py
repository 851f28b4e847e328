"""Issue 9's fusion remedies: availability-aware gate, temporal face stream, per-modality heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avemo import config as config_lib
from avemo import objectives
from avemo.models.attention import AudioGate, fuse
from avemo.models.bimodal import BimodalModel
from avemo.models.recurrent import SequenceLSTM
from configs import tiny


def _batch(b=2, length=6, size=16, dim=6):
    rng = np.random.default_rng(0)
    return {
        "faces": rng.integers(0, 255, (b, length, size, size, 1)).astype(np.uint8),
        "audio_features": rng.standard_normal((b, length, dim)).astype(np.float32),
        "speech_energy": rng.uniform(size=(b, length)).astype(np.float32),
        "face_present": (rng.uniform(size=(b, length)) > 0.3).astype(np.float32),
        "labels": rng.uniform(-1, 1, (b, length, 2)).astype(np.float32),
        "mask": np.ones((b, length), np.float32),
    }


def _model(**kw):
    kw = {"output_lstm_features": 8, **kw}
    return BimodalModel(
        conv_features=(4, 8, 8), fc_features=(8, 8), lstm_features=8, audio_dense_features=8,
        attention_features=8, **kw,
    )  # fmt: skip


def test_availability_gate_is_sigmoid_of_states_and_m_n():
    rng = np.random.default_rng(1)
    h, c = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    avail = rng.uniform(size=(2, 3, 2))
    gate = AudioGate("learned")
    variables = gate.init(jax.random.key(0), h, c, avail)
    w = variables["params"]["w_beta"]["kernel"][:, 0]
    b = variables["params"]["w_beta"]["bias"][0]
    assert w.shape == (10,)
    expected = jax.nn.sigmoid(np.concatenate([h, c, avail], -1) @ w + b)
    np.testing.assert_allclose(gate.apply(variables, h, c, avail), expected, rtol=1e-5)


def test_gate_with_availability_reacts_to_m_and_n_only_through_its_input():
    batch = _batch()
    model = _model(gate_inputs="states+availability")
    variables = model.init(jax.random.key(0), batch)
    beta = model.apply(variables, batch)["audio_gate"]
    changed = dict(batch, speech_energy=1.0 - batch["speech_energy"])
    assert not np.allclose(model.apply(variables, changed)["audio_gate"], beta)
    plain = _model()
    pv = plain.init(jax.random.key(0), batch)
    np.testing.assert_allclose(
        plain.apply(pv, changed)["audio_gate"], plain.apply(pv, batch)["audio_gate"]
    )


def test_face_memory_gives_the_face_path_temporal_state():
    """With the face LSTM, an earlier face changes later outputs even with the audio fixed."""
    batch = _batch()
    model = _model(
        video_lstm_features=8, gate="fixed", fixed_gate_value=0.0, output_lstm_features=0
    )
    variables = model.init(jax.random.key(0), batch)
    assert "face_lstm" in variables["params"]
    out = model.apply(variables, batch)["outputs"]
    earlier = dict(batch, faces=batch["faces"].copy())
    earlier["faces"][:, 0] = 255 - earlier["faces"][:, 0]
    later = model.apply(variables, earlier)["outputs"]
    assert not np.allclose(out[:, -1], later[:, -1])
    # Without it (and without the output LSTM) the face path is per frame: step -1 is unchanged.
    plain = _model(gate="fixed", fixed_gate_value=0.0, output_lstm_features=0)
    pv = plain.init(jax.random.key(0), batch)
    np.testing.assert_allclose(
        plain.apply(pv, batch)["outputs"][:, -1],
        plain.apply(pv, earlier)["outputs"][:, -1],
        atol=1e-5,
    )


@pytest.mark.parametrize("query", ["audio", "face", "audio+face"])
def test_face_context_depends_on_the_voice_only_through_an_audio_query(query):
    """attention_query="face": the face context c_t (hence the face head) is a function of the
    face alone; with an audio query ("audio", the paper's Eq. 28, or "audio+face") a silenced
    voice changes which face regions are pooled."""
    batch = _batch()
    model = _model(video_lstm_features=8, attention_query=query, modality_heads=True)
    variables = model.init(jax.random.key(0), batch)
    out = model.apply(variables, batch)
    silenced = dict(batch, audio_features=np.zeros_like(batch["audio_features"]))
    other = model.apply(variables, silenced)
    assert not np.allclose(other["audio_outputs"], out["audio_outputs"])  # the voice did change
    if query == "face":
        np.testing.assert_allclose(other["video_outputs"], out["video_outputs"], atol=1e-6)
        np.testing.assert_allclose(other["attention"], out["attention"], atol=1e-6)
    else:
        assert not np.allclose(other["video_outputs"], out["video_outputs"])
        assert not np.allclose(other["attention"], out["attention"])
    width = variables["params"]["attention"]["W_g"]["kernel"].shape[0]
    assert width == {"audio": 8, "face": 8, "audio+face": 16}[query]


def test_face_context_lstm_reads_the_face_context_through_a_recurrent_layer():
    """face_context_lstm: the face vector that the gate, the fusion and the face head see is an
    LSTM over c_t; with a fixed gate on the face (beta = 0), no face memory and no output LSTM,
    an earlier face then changes the last step's face head and fused output, which a per-frame
    c_t cannot; the face head stays a function of the face alone under the face query."""
    batch = _batch()
    earlier = dict(batch, faces=batch["faces"].copy())
    earlier["faces"][:, 0] = 255 - earlier["faces"][:, 0]
    kw = dict(gate="fixed", fixed_gate_value=0.0, output_lstm_features=0, modality_heads=True)
    model = _model(face_context_lstm=True, **kw)
    variables = model.init(jax.random.key(0), batch)
    assert variables["params"]["face_context_lstm"]
    out, moved = model.apply(variables, batch), model.apply(variables, earlier)
    assert not np.allclose(out["outputs"][:, -1], moved["outputs"][:, -1])
    assert not np.allclose(out["video_outputs"][:, -1], moved["video_outputs"][:, -1])
    plain = _model(**kw)
    pv = plain.init(jax.random.key(0), batch)
    np.testing.assert_allclose(
        plain.apply(pv, batch)["video_outputs"][:, -1],
        plain.apply(pv, earlier)["video_outputs"][:, -1],
        atol=1e-5,
    )
    faceq = _model(face_context_lstm=True, video_lstm_features=8, attention_query="face", **kw)
    fv = faceq.init(jax.random.key(0), batch)
    silenced = dict(batch, audio_features=np.zeros_like(batch["audio_features"]))
    np.testing.assert_allclose(
        faceq.apply(fv, silenced)["video_outputs"],
        faceq.apply(fv, batch)["video_outputs"],
        atol=1e-6,
    )


@pytest.mark.parametrize("detach", [False, True])
def test_detached_face_stream_is_trained_by_the_face_head_only(detach):
    """detach_face_stream: the fused output sends no gradient into the face stream (CNN, face
    LSTM, attention); the face head still does."""
    batch = _batch()
    model = _model(video_lstm_features=8, modality_heads=True, detach_face_stream=detach)
    variables = model.init(jax.random.key(0), batch)

    def grads(key):
        f = lambda p: model.apply({**variables, "params": p}, batch)[key].sum()  # noqa: E731
        return jax.grad(f)(variables["params"])

    def norm(tree):
        return float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(tree)))

    fused, face = grads("outputs"), grads("video_outputs")
    for part in ("alexnet", "face_lstm", "attention"):
        assert (norm(fused[part]) == 0.0) is detach, part
        assert norm(face[part]) > 0.0, part
    assert norm(fused["audio_lstm"]) > 0.0


def test_modality_heads_and_their_loss():
    batch = _batch()
    model = _model(modality_heads=True)
    variables = model.init(jax.random.key(0), batch)
    out = model.apply(variables, batch)
    assert out["audio_outputs"].shape == out["video_outputs"].shape == (2, 6, 2)
    loss = objectives.modality_head_loss("rmse", out, batch)
    face = batch["mask"] * batch["face_present"]
    expected = objectives.rmse(out["audio_outputs"], batch["labels"], batch["mask"]) + (
        objectives.rmse(out["video_outputs"], batch["labels"], face)
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    # The face head's loss ignores steps without a face.
    poisoned = dict(out, video_outputs=jnp.where(face[..., None] > 0, out["video_outputs"], 99.0))
    np.testing.assert_allclose(objectives.modality_head_loss("rmse", poisoned, batch), loss)
    # loss.audio_head_weight scales the voice head's part only; 0 drops it.
    audio = objectives.rmse(out["audio_outputs"], batch["labels"], batch["mask"])
    np.testing.assert_allclose(
        objectives.modality_head_loss("rmse", out, batch, 0.25), expected - 0.75 * audio, rtol=1e-6
    )
    silent = dict(out, audio_outputs=out["audio_outputs"] + 99.0)
    np.testing.assert_allclose(
        objectives.modality_head_loss("rmse", silent, batch, 0.0), expected - audio, rtol=1e-6
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model.gate_inputs", "everything"),
        ("model.fusion_combine", "product"),
        ("model.video_lstm_features", -1),
        ("model.face_lstm_dense_features", -1),
        ("model.attention_query", "video"),
        ("model.attention_query", "face"),  # tiny has no face stream (video_lstm_features 0)
        ("loss.modality_head_weight", -0.1),
        ("loss.audio_head_weight", -0.5),
        ("model.detach_face_stream", True),  # tiny has no modality heads
        ("model.output_residual", True),  # nor here
        ("train.face_init_lr_scale", 0.5),  # tiny has no warm-started face tower
        ("train.face_init_lr_scale", 0.0),
        ("train.modality_dropout", 1.0),
        ("data.synthetic.voice_valence", 1.5),
        ("data.synthetic.test_seconds", -1.0),
    ],
)
def test_new_keys_are_validated(key, value):
    c = tiny.get_config()
    section, name = key.rsplit(".", 1)
    node = c
    for part in section.split("."):
        node = node[part]
    node[name] = value
    with pytest.raises(config_lib.ConfigError, match=name):
        config_lib.validate(c)


def test_face_lstm_dense_layer_feeds_the_face_lstm():
    """`face_lstm_dense_features` puts a dense layer (+ ReLU) before the face LSTM, as the
    video-only model's video LSTM has; 0 leaves the face LSTM reading the pooled map."""
    batch = _batch()
    plain = _model(video_lstm_features=8)
    dense = _model(video_lstm_features=8, face_lstm_dense_features=5)
    p_plain = plain.init(jax.random.key(0), batch)["params"]["face_lstm"]
    p_dense = dense.init(jax.random.key(0), batch)["params"]["face_lstm"]
    assert "input_dense" not in p_plain
    assert p_dense["input_dense"]["kernel"].shape == (8, 5)  # pooled map (C = 8) -> 5
    assert p_dense["cell"]["ii"]["kernel"].shape == (5, 8)


def test_output_residual_corrects_the_face_heads_outputs():
    """output_residual: outputs = head(fused) + the face head's outputs, the head at zero first
    (the fusion starts from the face stream's prediction), and both paths train."""
    batch = _batch()
    model = _model(video_lstm_features=8, modality_heads=True, output_residual=True)
    variables = model.init(jax.random.key(0), batch)
    out = model.apply(variables, batch)
    np.testing.assert_array_equal(out["outputs"], out["video_outputs"])
    assert not np.allclose(out["outputs"], out["audio_outputs"])

    def loss(params):
        o = model.apply({**variables, "params": params}, batch)
        return objectives.rmse(o["outputs"], batch["labels"], batch["mask"])

    grads = jax.grad(loss)(variables["params"])
    assert np.abs(grads["head"]["kernel"]).sum() > 0  # the correction learns
    assert np.abs(grads["video_head"]["kernel"]).sum() > 0  # so does the face head, through it
    moved = jax.tree.map(lambda p, g: p - 0.1 * g, variables["params"], grads)
    out2 = model.apply({**variables, "params": moved}, batch)
    assert not np.allclose(out2["outputs"], out2["video_outputs"])
    plain = _model(video_lstm_features=8, modality_heads=True)
    pv = plain.init(jax.random.key(0), batch)
    assert not np.allclose(
        plain.apply(pv, batch)["outputs"], plain.apply(pv, batch)["video_outputs"]
    )


def test_gate_per_output_is_one_gate_and_eq30_per_dimension():
    """gate_per_output: beta [.., D] = sigmoid of its own row of w_beta; output d is the paper's
    read-out (output LSTM, head) of beta_d h + (1 - beta_d) c alone; `audio_gate` (Eq. 31, the
    reports) is the gates' mean."""

    batch = _batch()
    model = _model(
        video_lstm_features=8, face_context_lstm=True, gate_inputs="states+availability",
        gate_per_output=True,
    )  # fmt: skip
    variables = model.init(jax.random.key(0), batch)
    params = variables["params"]
    assert params["gate"]["w_beta"]["kernel"].shape[-1] == 2
    assert "output_lstm_0" in params and "head_1" in params and "head" not in params
    out, inter = model.apply(variables, batch, capture_intermediates=True)
    gates = out["audio_gates"]
    assert gates.shape == batch["mask"].shape + (2,)
    np.testing.assert_allclose(out["audio_gate"], gates.mean(-1), rtol=1e-6)
    assert not np.allclose(gates[..., 0], gates[..., 1])  # two gates, not one copied
    # the gate's closed form, from the states it saw
    h = inter["intermediates"]["audio_lstm"]["__call__"][0]
    c = inter["intermediates"]["face_context_lstm"]["__call__"][0]
    avail = np.stack([batch["speech_energy"], batch["face_present"]], -1)
    w, b = params["gate"]["w_beta"]["kernel"], params["gate"]["w_beta"]["bias"]
    expected = jax.nn.sigmoid(np.concatenate([h, c, avail], -1) @ w + b)
    np.testing.assert_allclose(gates, expected, rtol=1e-4, atol=1e-6)
    # output d reads only its own fused vector through its own LSTM and head
    for d in range(2):
        fused = fuse(h, c, gates[..., d])
        lstm_out = SequenceLSTM(8, impl=model.lstm_impl).apply(
            {"params": params[f"output_lstm_{d}"]}, fused
        )
        head = params[f"head_{d}"]
        expected_d = (lstm_out @ head["kernel"] + head["bias"])[..., 0]
        np.testing.assert_allclose(out["outputs"][..., d], expected_d, rtol=1e-4, atol=1e-5)

    # Eq. (31) on the mean gate: its gradient reaches both gates' rows
    def aux(p):
        o = model.apply({**variables, "params": p}, batch)
        m, n = batch["speech_energy"], batch["face_present"]
        return objectives.aux_modality_loss(o["audio_gate"], m, n, batch["mask"])

    g = jax.grad(aux)(params)["gate"]["w_beta"]["bias"]
    assert np.all(np.abs(g) > 0)


def test_gate_per_output_needs_fusion():
    c = tiny.get_config()
    c.model.mode = "audio"
    c.model.gate_per_output = True
    with pytest.raises(config_lib.ConfigError, match="gate_per_output"):
        config_lib.validate(c)


@pytest.mark.parametrize("per_output", [False, True])
def test_fusion_level_outputs_weighs_the_heads_predictions_by_beta(per_output):
    """fusion_level="outputs": outputs = beta * voice head + (1 - beta) * face head (Eq. 30 on
    the predictions, per dimension with gate_per_output); no output LSTM or main head."""
    batch = _batch()
    model = _model(
        video_lstm_features=8, modality_heads=True, gate_inputs="states+availability",
        gate_per_output=per_output, fusion_level="outputs",
    )  # fmt: skip
    variables = model.init(jax.random.key(0), batch)
    assert not any(k.startswith(("output_lstm", "head")) for k in variables["params"])
    out = model.apply(variables, batch)
    beta = out["audio_gates"] if per_output else out["audio_gate"][..., None]
    expected = beta * out["audio_outputs"] + (1 - beta) * out["video_outputs"]
    np.testing.assert_allclose(out["outputs"], expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(out["outputs"], out["audio_outputs"])
    assert not np.allclose(out["outputs"], out["video_outputs"])


@pytest.mark.parametrize(
    "overrides",
    [
        {"model.modality_heads": False},
        {"model.modality_heads": True, "model.output_residual": True},
        {"model.modality_heads": True, "model.mode": "video"},
    ],
)
def test_fusion_level_outputs_needs_the_heads_and_no_residual(overrides):
    c = tiny.get_config()
    c.model.fusion_level = "outputs"
    for key, value in overrides.items():
        c.model[key.split(".")[1]] = value
    with pytest.raises(config_lib.ConfigError, match="fusion_level"):
        config_lib.validate(c)
    c.model.fusion_level = "logits"
    with pytest.raises(config_lib.ConfigError, match="fusion_level"):
        config_lib.validate(c)


def test_fusion_level_per_dimension_reads_arousal_from_the_states_and_valence_from_the_heads():
    """fusion_level="features/outputs" (gate per dimension): arousal through its own Eq. (30) on
    the states, output LSTM and head; valence = beta_V * voice head + (1 - beta_V) * face head,
    with no output LSTM or head of its own."""
    batch = _batch()
    kw = dict(
        video_lstm_features=8, modality_heads=True, gate_inputs="states+availability",
        gate_per_output=True, face_context_lstm=True, attention_query="face",
    )  # fmt: skip
    model = _model(fusion_level="features/outputs", **kw)
    variables = model.init(jax.random.key(0), batch)
    params = variables["params"]
    assert "output_lstm_0" in params and "head_0" in params
    assert "output_lstm_1" not in params and "head_1" not in params
    out, inter = model.apply(variables, batch, capture_intermediates=True)
    gates = out["audio_gates"]
    valence = gates[..., 1] * out["audio_outputs"][..., 1]
    valence = valence + (1 - gates[..., 1]) * out["video_outputs"][..., 1]
    np.testing.assert_allclose(out["outputs"][..., 1], valence, rtol=1e-6, atol=1e-7)
    h = inter["intermediates"]["audio_lstm"]["__call__"][0]
    c = inter["intermediates"]["face_context_lstm"]["__call__"][0]
    lstm_out = SequenceLSTM(8, impl=model.lstm_impl).apply(
        {"params": params["output_lstm_0"]}, fuse(h, c, gates[..., 0])
    )
    head = params["head_0"]
    arousal = (lstm_out @ head["kernel"] + head["bias"])[..., 0]
    np.testing.assert_allclose(out["outputs"][..., 0], arousal, rtol=1e-4, atol=1e-5)
    # the voice head's share is in the valence: not the face head's alone
    assert not np.allclose(out["outputs"][..., 1], out["video_outputs"][..., 1])
    with pytest.raises(ValueError, match="gate_per_output"):  # one gate: no level per dimension
        _model(**{**kw, "gate_per_output": False}, fusion_level="features/outputs").init(
            jax.random.key(0), batch
        )


@pytest.mark.parametrize(
    "level,overrides,ok",
    [
        ("features/outputs", {"model.gate_per_output": True, "model.modality_heads": True}, True),
        ("outputs/features", {"model.gate_per_output": True, "model.modality_heads": True}, True),
        ("features/outputs", {"model.gate_per_output": False, "model.modality_heads": True}, False),
        ("features/outputs", {"model.gate_per_output": True, "model.modality_heads": False}, False),
        ("features/features/outputs", {"model.gate_per_output": True}, False),
        ("features/logits", {"model.gate_per_output": True, "model.modality_heads": True}, False),
    ],
)
def test_config_validates_a_fusion_level_per_dimension(level, overrides, ok):
    c = tiny.get_config()
    c.model.mode = "fusion"
    c.model.fusion_level = level
    for key, value in overrides.items():
        c.model[key.split(".")[1]] = value
    if ok:
        config_lib.validate(c)
    else:
        with pytest.raises(config_lib.ConfigError, match="fusion_level"):
            config_lib.validate(c)
