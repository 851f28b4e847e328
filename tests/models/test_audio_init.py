"""`model.audio_init`: the fusion's audio stream starts from an audio-only run (warm_start.py),
so its audio LSTM state h_t -- and the voice head on it -- is the audio-only model's at
initialisation; the other layers keep theirs."""

import jax
import numpy as np
import pytest

from avemo import config as config_lib
from avemo import train, warm_start
from configs import tiny
from tests.models.test_face_init import _trainer, assert_resume_skips_stage, started_from_stage


def _config(mode, audio_init=""):
    c = tiny.get_config()
    c.model.mode = mode
    c.model.modality_heads = mode == "fusion"
    c.model.audio_init = audio_init
    c.train.num_steps = 3
    c.train.eval_every_steps = 3
    c.train.checkpoint_every_steps = 3
    c.checkpoint.async_save = False
    return config_lib.validate(c)


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_runs")
    for seed in (0, 1):
        c = _config("audio")
        c.seed = seed
        train.train_and_evaluate(c, str(root / f"seed={seed}"))
    return root


def _audio_state(model, variables, batch):
    """h_t of a model's audio LSTM (the `audio_lstm` submodule's output)."""
    _, inter = model.apply(
        variables, batch, train=False, capture_intermediates=lambda m, _: m.name == "audio_lstm"
    )
    return np.asarray(inter["intermediates"]["audio_lstm"]["__call__"][0])


def test_fusion_audio_stream_equals_the_audio_only_model_at_initialisation(audio_run):
    from avemo import inference

    template = str(audio_run / "seed={seed}")
    cfg = _config("fusion", template)
    trainer, batch = _trainer(cfg)
    state = trainer.init_state()
    source = warm_start.audio_source(cfg, "")
    assert source == warm_start.resolve(template, cfg.seed)
    params, stats = warm_start.load_audio_stream(state.params, state.batch_stats, source)

    audio = inference.load(str(audio_run / f"seed={cfg.seed}"))
    want = _audio_state(
        audio.trainer.model,
        {"params": audio.state.params, "batch_stats": audio.state.batch_stats},
        batch,
    )
    got = _audio_state(trainer.model, {"params": params, "batch_stats": stats}, batch)
    np.testing.assert_allclose(got, want, atol=1e-5)
    fresh = _audio_state(
        trainer.model, {"params": state.params, "batch_stats": state.batch_stats}, batch
    )
    assert not np.allclose(fresh, want, atol=1e-3)
    # Everything but the audio stream keeps its initialisation.
    for name in set(state.params) - {"audio_lstm"}:
        jax.tree.map(np.testing.assert_array_equal, params[name], state.params[name])
    # {seed} picks the run: the other seed's audio stream is another one.
    other, _ = warm_start.load_audio_stream(
        state.params, state.batch_stats, warm_start.resolve(template, 1 - cfg.seed)
    )
    assert not np.allclose(
        _audio_state(trainer.model, {"params": other, "batch_stats": stats}, batch), want
    )


def test_audio_init_refuses_other_runs_and_shapes(audio_run, tmp_path):
    cfg = _config("fusion")
    cfg.model.audio_dense_features = cfg.model.audio_dense_features * 2
    trainer, _ = _trainer(cfg)
    state = trainer.init_state()
    with pytest.raises(config_lib.ConfigError, match=r"params audio_lstm.* in the fusion.s"):
        warm_start.load_audio_stream(state.params, state.batch_stats, str(audio_run / "seed=0"))
    with pytest.raises(config_lib.ConfigError, match="audio_init: .*no config.json"):
        warm_start.load_audio_stream(state.params, state.batch_stats, str(tmp_path))


def test_a_fresh_fusion_run_loads_the_audio_stream_and_only_from_an_audio_only_run(
    audio_run, tmp_path, caplog
):
    cfg = _config("fusion", str(audio_run / "seed={seed}"))
    cfg.train.num_steps = 1
    cfg.train.eval_every_steps = 1
    cfg.train.checkpoint_every_steps = 1
    with caplog.at_level("INFO", logger="avemo"):
        train.train_and_evaluate(cfg, str(tmp_path / "fusion"))
    assert f"Audio stream initialised from {audio_run / f'seed={cfg.seed}'}" in caplog.text
    # That fusion run is no audio-only run to start from.
    trainer, _ = _trainer(_config("fusion"))
    state = trainer.init_state()
    with pytest.raises(config_lib.ConfigError, match="model.mode='fusion' run.*'audio'"):
        warm_start.load_audio_stream(state.params, state.batch_stats, str(tmp_path / "fusion"))
    with pytest.raises(config_lib.ConfigError, match="audio_init .*needs model.mode='fusion'"):
        _config("audio", "runs/audio/seed={seed}")
    with pytest.raises(config_lib.ConfigError, match="audio_init=.*only the placeholders"):
        warm_start.resolve("runs/{member}", 0, key="audio_init")


def test_the_audio_stage_is_the_audio_only_ablation_row():
    """`audio_stage_config` of the default is `configs/fusion_ablation.py:audio`, stage steps
    long (its own input dropout included)."""
    from configs import default, fusion_ablation

    fusion = default.get_config()
    fusion.train.audio_stage_steps = 300
    stage = warm_start.audio_stage_config(fusion)
    row = fusion_ablation.get_config("audio")
    row.train.num_steps = 300
    row.eval.report_at_end = False
    assert stage.to_dict() == row.to_dict()
    assert stage.model.audio_input_dropout == fusion_ablation.AUDIO_ONLY_INPUT_DROPOUT


def test_audio_stage_trains_the_audio_only_model_first_and_starts_from_it(tmp_path):
    """A fusion run with a 3-step audio stage at a zero learning rate keeps the stage's audio
    stream; a resumed run does not train the stage again."""
    cfg = _config("fusion")
    cfg.train.audio_stage_steps = 3
    cfg.train.audio_stage_input_dropout = 0.25
    cfg.seed = 1
    cfg.train.learning_rate = 0.0
    cfg.train.num_steps = 1
    workdir = tmp_path / "run"
    train.train_and_evaluate(cfg, str(workdir))
    stage = started_from_stage(workdir, warm_start.AUDIO_STAGE_DIR, "audio_lstm", "audio_lstm")
    assert stage.config.model.mode == "audio" and stage.config.seed == 1
    assert stage.config.train.num_steps == 3
    assert stage.config.model.audio_input_dropout == 0.25
    assert_resume_skips_stage(cfg, workdir, warm_start.AUDIO_STAGE_DIR)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"train.audio_stage_steps": -1}, "audio_stage_steps must be >= 0"),
        ({"train.audio_stage_input_dropout": 1.0}, r"audio_stage_input_dropout must be in \[0"),
        (
            {"train.audio_stage_steps": 3, "model.audio_init": "runs/a/seed={seed}"},
            "audio_init and config.train.audio_stage_steps both",
        ),
        (
            {"train.audio_stage_steps": 3, "model.mode": "audio"},
            "audio_stage_steps .*needs model.mode='fusion'",
        ),
    ],
)
def test_audio_stage_keys_are_validated(changes, message):
    cfg = _config("fusion")
    if changes.get("model.mode") == "audio":
        cfg.model.modality_heads = False
    cfg.update_from_flattened_dict(changes)
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(cfg)
