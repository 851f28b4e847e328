"""Evaluation reports: the missing-modality protocol's inputs, β correlation, reports on disk."""

import csv
import json
import shutil

import ml_collections
import numpy as np
import pytest

from avemo import evaluate, inference, postprocess, train
from avemo.audio import frontend, normalize
from avemo.data.corpora import get_sessions
from configs import tiny
from tests.trained_model import trained_workdir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def dev_inputs(trained):
    workdir, config = trained
    sessions = train.load_sessions(config, str(workdir))
    dev = [s for s in sessions if s.split == "dev"]
    raw = {s.name: s for s in get_sessions(config.data)}
    normalizer = normalize.load(workdir / "normalizer.npz")
    return config, dev, raw, normalizer


def test_face_removed_has_no_face_anywhere_and_keeps_audio(dev_inputs):
    config, dev, raw, normalizer = dev_inputs
    assert dev[0].arrays["face_present"].max() == 1.0  # the corpus shows a face
    (removed,) = evaluate.protocol_sessions("face_removed", dev, raw, config, normalizer)
    assert np.all(removed.arrays["face_present"] == 0)
    assert not np.any(removed.arrays["faces"])
    for key in ("audio_features", "speech_energy", "labels"):
        np.testing.assert_array_equal(removed.arrays[key], dev[0].arrays[key])


def test_audio_silenced_is_the_front_end_on_silence(dev_inputs):
    config, dev, raw, normalizer = dev_inputs
    (silenced,) = evaluate.protocol_sessions("audio_silenced", dev, raw, config, normalizer)
    signal = evaluate.session_signal(raw[dev[0].name], config)
    silence = frontend.extract((np.zeros_like(signal), 16000), dev[0].num_steps, config.audio)
    expected = normalize.apply(silence["audio_features"], normalizer)
    np.testing.assert_allclose(silenced.arrays["audio_features"], expected, atol=1e-6)
    assert np.all(silenced.arrays["speech_energy"] == 0)
    assert dev[0].arrays["speech_energy"].max() > 0.5  # there was speech before
    np.testing.assert_array_equal(silenced.arrays["faces"], dev[0].arrays["faces"])
    np.testing.assert_array_equal(silenced.arrays["face_present"], dev[0].arrays["face_present"])


def test_far_field_is_quieter_duller_and_changes_the_features(dev_inputs):
    config, dev, raw, normalizer = dev_inputs
    rate = 16000
    t = np.arange(rate) / rate
    low, high = np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 5000 * t)
    level = lambda x: 20 * np.log10(np.sqrt(np.mean(x[rate // 2 :] ** 2)))  # noqa: E731
    assert -35.0 < level(evaluate.far_field(low, rate)) - level(low) < -20.0
    assert level(evaluate.far_field(high, rate)) - level(high) < -50.0  # low-passed
    (far,) = evaluate.protocol_sessions("far_field", dev, raw, config, normalizer)
    assert far.arrays["audio_features"].shape == dev[0].arrays["audio_features"].shape
    assert not np.allclose(far.arrays["audio_features"], dev[0].arrays["audio_features"])
    np.testing.assert_array_equal(far.arrays["face_present"], dev[0].arrays["face_present"])


def test_gate_correlation_closed_form():
    rng = np.random.default_rng(0)
    speech = rng.uniform(size=100)
    faces = (rng.uniform(size=100) > 0.3).astype(np.float32)
    beta = 0.5 + 0.25 * (speech - faces)  # Eq. (31)'s optimum direction
    assert evaluate.gate_modality_correlation(beta, speech, faces) == pytest.approx(1.0)
    assert evaluate.gate_modality_correlation(1 - beta, speech, faces) == pytest.approx(-1.0)
    assert np.isnan(evaluate.gate_modality_correlation(np.full(100, 0.4), speech, faces))


def test_reports_protocols_and_post_processing_on_disk(trained):
    workdir, _ = trained
    summary = evaluate.evaluate_workdir(str(workdir))
    reports = workdir / "reports"
    for name in ("report.md", "metrics.csv", "robustness.csv", "postprocess.csv", "summary.json"):
        assert (reports / name).is_file()
    assert (reports / "plots" / "dev_1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(reports.rglob(".*.tmp"))
    assert set(summary["robustness"]) == set(evaluate.PROTOCOLS)
    for entry in summary["robustness"].values():
        assert np.isfinite(entry["ccc_mean"]) and -1 <= entry["ccc_mean"] <= 1
        assert -1 <= entry["gate_availability_corr"] <= 1 or np.isnan(
            entry["gate_availability_corr"]
        )
    rows = list(csv.DictReader((reports / "metrics.csv").open()))
    # 4 protocols x (raw, postprocessed) x (dev_1, pooled)
    assert len(rows) == 16
    # The table's numbers are the model's predictions scored with the saved post-processing.
    model = inference.load(str(workdir))
    dev = [s for s in train.load_sessions(model.config, str(workdir)) if s.split == "dev"]
    params = postprocess.load(workdir)
    out = postprocess.apply(model.predict(dev)["dev_1"]["outputs"], params)
    row = next(
        r
        for r in rows
        if (r["protocol"], r["stage"], r["session"]) == ("normal", "postprocessed", "dev_1")
    )
    gold = dev[0].arrays["labels"]
    from avemo.metrics import ccc

    assert float(row["ccc_arousal"]) == pytest.approx(ccc(out[:, 0], gold[:, 0]), abs=1e-6)
    # Post-processing fitted on dev improves or keeps dev CCC, step by step.
    for step in summary["postprocess"]:
        assert step["ccc_after"] >= step["ccc_before"]
    raw_row = next(
        r for r in rows if (r["protocol"], r["stage"], r["session"]) == ("normal", "raw", "pooled")
    )
    post_row = next(
        r
        for r in rows
        if (r["protocol"], r["stage"], r["session"]) == ("normal", "postprocessed", "pooled")
    )
    for dim in ("arousal", "valence"):
        assert float(post_row[f"ccc_{dim}"]) >= float(raw_row[f"ccc_{dim}"]) - 1e-9


def test_training_writes_reports_at_the_end(trained, tmp_path):
    """The `eval.report_at_end` hook; a finished run re-launched only writes its reports."""
    workdir, config = trained
    copy = tmp_path / "workdir"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("reports", "postprocess.json"))
    config = ml_collections.ConfigDict(config.to_dict())
    config.eval.report_at_end = True
    train.train_and_evaluate(config, str(copy))
    assert (copy / "reports" / "report.md").is_file()
    assert (copy / "reports" / "plots" / "dev_1.png").is_file()
    assert postprocess.load(copy)["fitted_on"] == ["dev_1"]
    robustness = list(csv.DictReader((copy / "reports" / "robustness.csv").open()))
    assert [r["protocol"] for r in robustness] == list(evaluate.PROTOCOLS)


def test_dev_and_test_reports_share_one_model_and_one_set_of_inputs(trained, tmp_path, monkeypatch):
    """`report_after_training` with the test split: the chosen checkpoint is loaded once and each
    degraded input made once for both splits (the run's memory held one copy, not two)."""
    from avemo import inference

    workdir, config = trained
    copy = tmp_path / "workdir"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("reports", "postprocess.json"))
    config = ml_collections.ConfigDict(config.to_dict())
    config.eval.report_at_end = True
    config.eval.report_test = True
    loads, made = [], []
    load, degrade = inference.load, evaluate.protocol_session
    monkeypatch.setattr(inference, "load", lambda *a, **k: loads.append(a) or load(*a, **k))
    monkeypatch.setattr(
        evaluate,
        "protocol_session",
        lambda p, s, *a: made.append((p, s.name)) or degrade(p, s, *a),
    )
    evaluate.report_after_training(config, str(copy))
    assert len(loads) == 1
    assert sorted(made) == sorted(set(made))
    assert {name for _, name in made} == {"dev_1", "test_1"}
    for split in ("dev", "test"):
        assert (evaluate.report_dir(str(copy), split) / "summary.json").is_file()


def test_no_reports_when_disabled_or_without_checkpoints(tmp_path):
    config = tiny.get_config()  # report_at_end False
    assert not config.eval.report_at_end
    config.eval.report_at_end = True
    config.checkpoint.enabled = False
    evaluate.report_after_training(config, str(tmp_path))  # nothing to reload: no reports
    assert not (tmp_path / "reports").exists()


def test_population_reports_equal_each_members_own_evaluation(trained, tmp_path, monkeypatch):
    """`report_population` (one program for all members, shared degraded inputs) writes what
    each member's own `report_after_training` writes; each degraded input is made once."""
    workdir, config = trained
    configs, members = [], []
    for seed in (0, 1):
        c = ml_collections.ConfigDict(config.to_dict())
        c.seed = seed
        c.eval.report_at_end = True
        c.eval.report_test = True
        member = tmp_path / f"seed{seed}"
        if seed == 0:  # the trained model itself; the other member trained with another seed
            shutil.copytree(workdir, member, ignore=shutil.ignore_patterns("reports", "post*"))
        else:
            c.eval.report_at_end = False
            train.train_and_evaluate(c, str(member))
            c.eval.report_at_end = True
        (member / "config.json").write_text(c.to_json_best_effort())  # as the population's
        configs.append(c)
        members.append(member)

    made = []
    degrade = evaluate.protocol_session
    monkeypatch.setattr(
        evaluate,
        "protocol_session",
        lambda p, s, *a: made.append((p, s.name)) or degrade(p, s, *a),
    )
    evaluate.report_population(configs, [str(m) for m in members])
    audio = [m for m in made if m[0] in ("audio_silenced", "far_field")]
    assert sorted(audio) == sorted(set(audio)) and len(audio) == 4  # 2 protocols x dev_1, test_1
    monkeypatch.undo()

    def figures(member, split):
        path = evaluate.report_dir(str(member), split) / "summary.json"
        summary = json.loads(path.read_text())
        return summary["checkpoint_step"], {
            (p, k): v for p, e in summary["robustness"].items() for k, v in e.items()
        }

    together = {(m, s): figures(m, s) for m in members for s in ("dev", "test")}
    fits = {m: postprocess.load(m) for m in members}
    assert together[(members[0], "test")] != together[(members[1], "test")]
    for c, member in zip(configs, members, strict=True):
        shutil.rmtree(member / "reports")
        (member / "postprocess.json").unlink()
        evaluate.report_after_training(c, str(member))
        assert postprocess.load(member).keys() == fits[member].keys()
        for split in ("dev", "test"):
            step, alone = figures(member, split)
            assert step == together[(member, split)][0]
            assert alone.keys() == together[(member, split)][1].keys()
            for key, value in alone.items():
                np.testing.assert_allclose(
                    together[(member, split)][1][key], value, rtol=1e-5, atol=1e-6, err_msg=key
                )
        assert (member / "reports" / "test" / "plots" / "test_1.png").is_file()
