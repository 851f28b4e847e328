"""avemo.late_fusion: the stack's closed form, out-of-fold dev weights, the gated features, and
the command on a trained workdir."""

import csv
import json

import numpy as np
import pytest

from avemo import late_fusion
from tests.trained_model import trained_workdir


def _session(rng, steps=400):
    a, b = rng.normal(size=(steps, 2)), rng.normal(size=(steps, 2))
    n = (rng.random(steps) > 0.3).astype(np.float32)
    m = rng.random(steps).astype(np.float32)
    return a, b, n, m


def test_ridge_free_stack_is_least_squares_and_recovers_known_weights():
    rng = np.random.default_rng(0)
    xs, ys = [], []
    true = np.array([[0.5, -0.2], [0.1, 0.9], [0.3, 0.0], [-0.4, 0.2], [0.05, -0.1]])  # 4 + 1
    for _ in range(3):
        a, b, n, m = _session(rng)
        x = late_fusion.design_matrix([a, b], n, m, "linear")
        xs.append(x)
        ys.append(x @ true)
    w = late_fusion.fit_weights(xs, ys, ridge=0.0)
    np.testing.assert_allclose(w, true, atol=1e-9)
    noisy = [y + rng.normal(0, 0.3, y.shape) for y in ys]
    lstsq = np.linalg.lstsq(np.concatenate(xs), np.concatenate(noisy), rcond=None)[0]
    np.testing.assert_allclose(late_fusion.fit_weights(xs, noisy, 0.0), lstsq, atol=1e-9)
    # The ridge shrinks the member weights, never the intercept's role of matching the mean.
    shrunk = late_fusion.fit_weights(xs, noisy, 10.0)
    assert np.abs(shrunk[:-1]).sum() < np.abs(lstsq[:-1]).sum()


def test_out_of_fold_weights_never_see_their_own_sessions_labels():
    rng = np.random.default_rng(1)
    xs, ys = {}, {}
    for name in ("dev_1", "dev_2", "dev_3"):
        a, b, n, m = _session(rng)
        xs[name] = late_fusion.design_matrix([a, b], n, m, "gated")
        ys[name] = a * 0.7 + rng.normal(0, 0.1, a.shape)
    folds = late_fusion.fit_folds(xs, ys, 1e-3)
    changed = dict(ys, dev_2=-ys["dev_2"])
    refit = late_fusion.fit_folds(xs, changed, 1e-3)
    np.testing.assert_array_equal(refit["dev_2"], folds["dev_2"])  # its own labels unused
    assert not np.allclose(refit["dev_1"], folds["dev_1"])  # the others' folds use them
    with pytest.raises(ValueError, match="two dev sessions"):
        late_fusion.fit_folds({"dev_1": xs["dev_1"]}, {"dev_1": ys["dev_1"]}, 1e-3)


def test_gated_features_switch_members_where_the_face_is_absent():
    """Gold = member A (the "face" model) where n = 1, member B where n = 0: the gated stack
    fits it exactly, one weight per member for the whole session cannot."""
    rng = np.random.default_rng(2)
    a, b, n, m = _session(rng, 2000)
    gold = np.where(n[:, None] > 0, a, b)
    residual = {}
    for kind in late_fusion.FEATURES:
        x = late_fusion.design_matrix([a, b], n, m, kind)
        w = late_fusion.fit_weights([x], [gold], 0.0)
        residual[kind] = float(np.abs(x @ w - gold).max())
    assert residual["gated"] < 1e-9
    assert residual["linear"] > 0.5
    with pytest.raises(ValueError, match="features"):
        late_fusion.design_matrix([a, b], n, m, "quadratic")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_workdir(tmp_path_factory)


def test_command_scores_the_test_split_with_dev_fitted_weights(trained, tmp_path, capsys):
    workdir, _ = trained
    out = tmp_path / "late"
    rc = late_fusion.main(
        ["--members", str(workdir), str(workdir), "--workdir", str(out), "--split", "test",
         "--features", "gated", "--protocols", "normal", "face_removed"]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "reports" / "test" / "summary.json").read_text())
    assert summary["split"] == "test"
    assert set(summary["robustness"]) == {"normal", "face_removed"}
    assert np.isfinite(summary["robustness"]["normal"]["ccc_arousal"])
    record = json.loads((out / late_fusion.RESULT_FILE).read_text())
    assert record["fitted_on"] == ["dev_1"]  # the stack is fitted on dev, never on test
    assert len(record["members"]) == 2 and record["features"] == "gated"
    assert len(record["weights"]["valence"]) == len(record["feature_names"]) == 4 * 3 + 3
    assert record["feature_names"][:4] == [
        "fusion0:arousal", "fusion0:valence", "fusion1:arousal", "fusion1:valence",
    ]  # fmt: skip
    assert "Evaluation of" in capsys.readouterr().out


def test_command_names_a_member_that_is_not_a_workdir(tmp_path, capsys):
    rc = late_fusion.main(["--members", str(tmp_path / "nothing"), "--workdir", str(tmp_path)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "avemo.late_fusion: error:" in err and "nothing" in err
    assert not (tmp_path / late_fusion.RESULT_FILE).exists()


def test_evaluation_keeps_each_streams_head_on_the_labels_clock():
    """A fusion model with modality_heads: prediction returns the fused output, the gate and
    both heads; with a label delay the three predictions move onto the labels' clock, the gate
    stays on the inputs' clock."""
    from avemo import train
    from avemo.data import pipeline
    from configs import tiny

    c = tiny.get_config()
    c.model.modality_heads = True
    sessions = train.load_sessions(c, "")
    trainer = train.Trainer(c, train.example_batch(sessions, c, 4), 10)
    state = trainer.init_state()
    dev = [s for s in sessions if s.split == "dev"][:1]
    result = trainer.predict(state, pipeline.eval_plan(dev, c))[dev[0].name]
    assert set(result) == {"outputs", "audio_outputs", "video_outputs", "audio_gate"}
    assert result["video_outputs"].shape == result["outputs"].shape == (dev[0].num_steps, 2)
    assert not np.allclose(result["video_outputs"], result["audio_outputs"])

    values = np.arange(10.0).reshape(1, 5, 2)
    plan = pipeline.EvalPlan([None], [("s", 0, 0, 5)], {"s": 5}, label_delay=2)
    out = pipeline.stitch(plan, [{"outputs": values, "video_outputs": -values,
                                  "audio_gate": values[..., 0]}])["s"]  # fmt: skip
    shifted = pipeline.onto_label_clock(values[0], 2)
    np.testing.assert_array_equal(out["outputs"], shifted)
    np.testing.assert_array_equal(out["video_outputs"], -shifted)
    np.testing.assert_array_equal(out["audio_gate"], values[0, :, 0])


def test_dev_split_is_stacked_out_of_fold_under_every_protocol(tmp_path):
    """Two dev sessions: each is stacked with the other's weights, under normal inputs and under
    a degraded protocol (after the post-processing's own cross-fit)."""
    from avemo import train
    from configs import tiny

    c = tiny.get_config()
    c.data.memory.dev_sessions = 2
    c.train.num_steps = 2
    c.train.eval_every_steps = 2
    c.train.checkpoint_every_steps = 2
    c.checkpoint.async_save = False
    c.eval.report_at_end = False
    member = tmp_path / "member"
    train.train_and_evaluate(c, str(member))
    out = tmp_path / "late"
    summary = late_fusion.run([str(member)], str(out), "dev", "gated",
                              protocols=("normal", "face_removed"))  # fmt: skip
    assert "out of fold" in summary["postprocess_fit"]
    rows = list(csv.DictReader((out / "reports" / "metrics.csv").open()))
    assert {r["protocol"] for r in rows} == {"normal", "face_removed"}
    assert {r["session"] for r in rows} == {"dev_1", "dev_2", "pooled"}
    record = json.loads((out / late_fusion.RESULT_FILE).read_text())
    assert record["fitted_on"] == ["dev_1", "dev_2"]
