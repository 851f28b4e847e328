"""`model.face_init`: the fusion's face stream starts from a video-only run, layer for layer, so
its face head computes the video-only model's output at initialisation (avemo/warm_start.py)."""

import os

import jax
import numpy as np
import pytest

from avemo import config as config_lib
from avemo import train, warm_start
from configs import tiny


def _video_config():
    c = tiny.get_config()
    c.model.mode = "video"
    c.train.num_steps = 3
    c.train.eval_every_steps = 3
    c.train.checkpoint_every_steps = 3
    c.checkpoint.async_save = False
    return c


def _fusion_config(face_init=""):
    c = tiny.get_config()
    c.model.video_lstm_features = c.model.lstm_features
    c.model.face_lstm_dense_features = c.model.audio_dense_features
    c.model.face_context_lstm = True
    c.model.modality_heads = True
    c.model.attention_query = "face"
    c.model.face_init = face_init
    c.train.num_steps = 2
    c.train.eval_every_steps = 2
    c.train.checkpoint_every_steps = 2
    c.checkpoint.async_save = False
    return config_lib.validate(c)


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    """Workdirs of video-only runs with seeds 0 and 1 (a few steps each)."""
    root = tmp_path_factory.mktemp("video_runs")
    for seed in (0, 1):
        c = _video_config()
        c.seed = seed
        train.train_and_evaluate(c, str(root / f"seed={seed}"))
    return root


def started_from_stage(workdir, subdir, fused_layer, stage_layer):
    """The stage run in `workdir`/`subdir`, after asserting that the fusion in `workdir` (its
    latest checkpoint) holds that stage's `stage_layer` as its `fused_layer`."""
    from avemo import inference

    stage = inference.load(os.path.join(workdir, subdir))
    fused = inference.load(str(workdir), which="latest")
    jax.tree.map(
        np.testing.assert_array_equal,
        fused.state.params[fused_layer],
        stage.state.params[stage_layer],
    )
    return stage


def assert_resume_skips_stage(cfg, workdir, subdir):
    """A resumed fusion run in `workdir` does not train its `subdir` stage again."""
    path = os.path.join(workdir, subdir, "final_metrics.json")
    mtime = os.path.getmtime(path)
    train.train_and_evaluate(cfg, str(workdir))
    assert os.path.getmtime(path) == mtime


def _trainer(config):
    sessions = train.load_sessions(config, "")
    batch = train.example_batch(sessions, config, 4)
    return train.Trainer(config, batch, 10), batch


def test_fusion_face_head_equals_the_video_only_model_at_initialisation(video_run):
    template = str(video_run / "seed={seed}")
    fusion_cfg = _fusion_config(template)
    trainer, batch = _trainer(fusion_cfg)
    state = trainer.init_state()
    source = warm_start.resolve(template, 1)
    params, stats = warm_start.load_face_stream(state.params, state.batch_stats, source)

    from avemo import inference

    video = inference.load(str(video_run / "seed=1"))
    want = video.trainer.model.apply(
        {"params": video.state.params, "batch_stats": video.state.batch_stats}, batch, train=False
    )["outputs"]
    got = trainer.model.apply({"params": params, "batch_stats": stats}, batch, train=False)
    np.testing.assert_allclose(got["video_outputs"], want, atol=1e-5)
    # The other seed's run is another model: {seed} picks the run.
    other, other_stats = warm_start.load_face_stream(
        state.params, state.batch_stats, warm_start.resolve(template, 0)
    )
    got0 = trainer.model.apply({"params": other, "batch_stats": other_stats}, batch, train=False)
    assert not np.allclose(got0["video_outputs"], want, atol=1e-4)
    # The fusion-only parts keep their initialisation; face_memory starts at zero.
    for name in ("audio_lstm", "gate", "head", "output_lstm", "audio_head"):
        jax.tree.map(np.testing.assert_array_equal, params[name], state.params[name])
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(params["face_memory"]))
    # Without the warm start the face head is something else.
    fresh = trainer.model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, batch, train=False
    )
    assert not np.allclose(fresh["video_outputs"], want, atol=1e-3)


def test_an_audio_and_face_query_starts_as_the_video_only_query(video_run):
    """attention_query="audio+face": W_g's face rows are the video-only W_g, its voice rows zero,
    so the face head is the video-only model's at initialisation -- whatever the voice says --
    and the voice rows then train."""
    fusion_cfg = _fusion_config(str(video_run / "seed={seed}"))
    fusion_cfg.model.attention_query = "audio+face"
    fusion_cfg = config_lib.validate(fusion_cfg)
    trainer, batch = _trainer(fusion_cfg)
    state = trainer.init_state()
    params, stats = warm_start.load_face_stream(
        state.params, state.batch_stats, str(video_run / "seed=1")
    )
    from avemo import inference

    video = inference.load(str(video_run / "seed=1"))
    want = video.trainer.model.apply(
        {"params": video.state.params, "batch_stats": video.state.batch_stats}, batch, train=False
    )["outputs"]
    kernel = np.asarray(params["attention"]["W_g"]["kernel"])
    voice_rows = fusion_cfg.model.lstm_features
    assert kernel.shape[0] == voice_rows + fusion_cfg.model.video_lstm_features
    assert not np.any(kernel[:voice_rows])
    np.testing.assert_array_equal(
        kernel[voice_rows:], np.asarray(video.state.params["attention"]["W_g"]["kernel"])
    )
    variables = {"params": params, "batch_stats": stats}
    got = trainer.model.apply(variables, batch, train=False)
    np.testing.assert_allclose(got["video_outputs"], want, atol=1e-5)
    loud = dict(batch, audio_features=batch["audio_features"] * 3.0 + 1.0)
    got_loud = trainer.model.apply(variables, loud, train=False)
    np.testing.assert_allclose(got_loud["video_outputs"], want, atol=1e-5)
    # The voice rows get a gradient: the voice can learn to steer the face attention.
    grad = jax.grad(
        lambda p: trainer.model.apply({"params": p, "batch_stats": stats}, loud, train=False)[
            "video_outputs"
        ].sum()
    )(params)
    assert np.any(np.asarray(grad["attention"]["W_g"]["kernel"])[:voice_rows])


def test_face_init_refuses_a_narrower_face_tower_naming_the_layer(video_run):
    cfg = _fusion_config()
    cfg.model.face_lstm_dense_features = 8  # the video run's video_lstm has a 16-wide dense
    trainer, _ = _trainer(cfg)
    state = trainer.init_state()
    with pytest.raises(
        config_lib.ConfigError,
        match=r"params video_lstm\[.*\[16, 16\] there and \[8, 16\] in the fusion.s face_lstm",
    ):
        warm_start.load_face_stream(state.params, state.batch_stats, str(video_run / "seed=0"))


def test_face_init_needs_a_finished_video_only_run(video_run, stage_run, tmp_path):
    cfg = _fusion_config()
    trainer, _ = _trainer(cfg)
    state = trainer.init_state()
    with pytest.raises(config_lib.ConfigError, match="no config.json"):
        warm_start.load_face_stream(state.params, state.batch_stats, str(tmp_path))
    assert warm_start.resolve("{workdir}/v/{seed}", 3, "/runs/a") == "/runs/a/v/3"
    with pytest.raises(config_lib.ConfigError, match="only the placeholders"):
        warm_start.resolve(str(video_run / "{member}"), 0)
    with pytest.raises(config_lib.ConfigError, match="model.mode='fusion' run"):
        warm_start.load_face_stream(state.params, state.batch_stats, str(stage_run[0]))


def test_face_init_key_is_validated():
    cfg = _fusion_config()
    cfg.model.face_init = "runs/video/seed={seed}"
    cfg.model.face_context_lstm = False
    with pytest.raises(config_lib.ConfigError, match="face_stage_steps need the face tower"):
        config_lib.validate(cfg)
    cfg = _fusion_config("runs/video/seed={seed}")
    cfg.model.attention_query = "audio"  # the voice alone cannot query a warm-started tower
    with pytest.raises(config_lib.ConfigError, match="attention_query='face'"):
        config_lib.validate(cfg)
    cfg.model.attention_query = "audio+face"
    config_lib.validate(cfg)
    cfg = _fusion_config("runs/video")
    cfg.model.freeze_video = True
    with pytest.raises(config_lib.ConfigError, match="without model.video_init"):
        config_lib.validate(cfg)
    cfg = _fusion_config("runs/video")
    cfg.train.face_stage_steps = 5
    with pytest.raises(config_lib.ConfigError, match="set one"):
        config_lib.validate(cfg)
    cfg = _fusion_config()
    cfg.train.face_stage_steps = -1
    with pytest.raises(config_lib.ConfigError, match="face_stage_steps must be >= 0"):
        config_lib.validate(cfg)
    cfg.train.face_stage_steps = 5
    cfg.model.face_lstm_dense_features = 0
    with pytest.raises(config_lib.ConfigError, match="face_lstm_dense_features and"):
        config_lib.validate(cfg)


def test_the_face_stage_is_the_video_only_ablation_row():
    """`stage_config` of the default is `configs/fusion_ablation.py:video`, stage steps long,
    save its schedule: the default's face tower continues it (train.stage_schedule), so the
    stage runs the first 300 steps of one schedule over the stage and the fusion."""
    from configs import default, fusion_ablation

    fusion = default.get_config()
    fusion.train.face_stage_steps = 300
    fusion.model.face_lstm_dense_features = fusion.model.audio_dense_features
    stage = warm_start.stage_config(fusion)
    row = fusion_ablation.get_config("video")
    row.train.num_steps = 300
    row.eval.report_at_end = False
    assert fusion.train.stage_schedule == "face_continued"
    assert stage.train.schedule_steps == 300 + fusion.train.num_steps
    stage.train.schedule_steps = 0  # the row's own schedule: its 300 steps
    assert stage.to_dict() == row.to_dict()
    fusion.train.stage_schedule = "restart"
    assert warm_start.stage_config(fusion).to_dict() == row.to_dict()


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    """(workdir, config) of a fusion run with a 3-step face stage, seed 1, at a zero learning
    rate: the fusion keeps exactly what it started from."""
    cfg = _fusion_config()
    cfg.train.face_stage_steps = 3
    cfg.seed = 1
    cfg.train.learning_rate = 0.0
    workdir = tmp_path_factory.mktemp("stage_run") / "run"
    train.train_and_evaluate(cfg, str(workdir))
    return workdir, cfg


def test_face_stage_trains_the_video_only_model_first_and_starts_from_it(stage_run):
    workdir, cfg = stage_run
    # The fusion started from the stage: with a zero learning rate it still holds those weights
    # (its own face_context_lstm is initialised from another key: without the load they differ).
    stage = started_from_stage(workdir, warm_start.STAGE_DIR, "face_context_lstm", "output_lstm")
    assert stage.config.model.mode == "video" and stage.config.seed == 1
    assert stage.config.train.num_steps == 3
    assert_resume_skips_stage(cfg, workdir, warm_start.STAGE_DIR)


def test_a_population_trains_each_members_face_stage_and_starts_from_its_own(tmp_path):
    """... and its audio stage (the second first stage) likewise."""
    from avemo import population

    configs = []
    for seed in (0, 1):
        c = _fusion_config()
        c.seed = seed
        c.train.face_stage_steps = 2
        c.train.audio_stage_steps = 2
        c.train.learning_rate = 0.0  # the members keep what they loaded
        configs.append(c)
    members = [str(tmp_path / f"seed={c.seed}") for c in configs]
    population.train_population(configs, members, str(tmp_path / "_p"), data_order="member")
    outs = []
    for member in members:
        stage = started_from_stage(member, warm_start.STAGE_DIR, "face_context_lstm", "output_lstm")
        assert stage.config.model.mode == "video" and stage.state.step == 2
        audio = started_from_stage(member, warm_start.AUDIO_STAGE_DIR, "audio_lstm", "audio_lstm")
        assert audio.config.model.mode == "audio" and audio.state.step == 2
        outs.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(stage.state.params)]))
    assert not np.allclose(outs[0], outs[1])  # each member its own seed's stage


def test_a_preempted_face_stage_stops_the_run_before_the_fusion(tmp_path, monkeypatch):
    """SIGTERM during the stage returns early from it: the fusion must not start from it."""
    original = train.train_and_evaluate

    def stage_preempted(config, workdir):
        if config.model.mode == "video":
            return {}  # as a preempted stage returns: before its last step, no final metrics
        return original(config, workdir)

    monkeypatch.setattr(train, "train_and_evaluate", stage_preempted)
    cfg = _fusion_config()
    cfg.train.face_stage_steps = 3
    assert stage_preempted(cfg, str(tmp_path / "run")) == {}
    assert not (tmp_path / "run" / "checkpoints").exists() or not os.listdir(
        tmp_path / "run" / "checkpoints"
    )
    assert not (tmp_path / "run" / "final_metrics.json").exists()
