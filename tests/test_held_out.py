"""Held-out figures: hidden test labels, dev-only selection, best mode, cross-fitted
post-processing and post-processing tied to its checkpoint (issue 9's review findings)."""

import csv
import json
import logging

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from avemo import checkpointing, evaluate, inference, postprocess, train
from avemo import config as config_lib
from avemo.data.corpora import synthetic
from avemo.metrics import ccc
from configs import tiny
from tests import trained_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_model.trained_workdir(tmp_path_factory)


# ------------------------------------------------------------------------- hidden test labels


def test_hidden_test_labels_are_unreachable_from_training_selection_and_postprocessing(trained):
    workdir, config = trained
    root = config.data.root
    # The corpus holds a test gold standard, apart from the release layout.
    assert synthetic.hidden_test_labels(root, "test_1") is not None
    sessions = train.load_sessions(config, str(workdir))
    test = [s for s in sessions if s.split == "test"]
    assert test and not any(s.has_labels for s in test)
    # Dev reports: selection and post-processing fit read nothing hidden either.
    trained_model.PHASE["name"] = "dev evaluation"
    try:
        evaluate.evaluate_workdir(str(workdir), split="dev", protocols=("normal",), plots=False)
    finally:
        trained_model.PHASE["name"] = "idle"
    leaked = [(p, f) for p, f in trained_model.HIDDEN_OPENS if p in ("training", "dev evaluation")]
    assert not leaked, f"hidden test labels read outside the test evaluation: {leaked}"
    # Positive control: the hook does see the one place that reads them.
    trained_model.PHASE["name"] = "test evaluation"
    try:
        summary = evaluate.evaluate_workdir(
            str(workdir), split="test", protocols=("normal",), plots=False
        )
    finally:
        trained_model.PHASE["name"] = "idle"
    assert any(p == "test evaluation" for p, _ in trained_model.HIDDEN_OPENS)
    assert summary["split"] == "test"


def test_test_split_is_scored_with_the_dev_fit_and_the_hidden_labels(trained):
    workdir, config = trained
    evaluate.evaluate_workdir(str(workdir), split="dev", protocols=("normal",), plots=False)
    params = postprocess.load(workdir)
    summary = evaluate.evaluate_workdir(
        str(workdir), split="test", protocols=("normal", "face_removed"), fit_postprocess=False
    )
    assert postprocess.load(workdir) == params  # test scoring fits nothing
    assert summary["checkpoint_chosen_on"] == "dev"
    reports = workdir / "reports" / "test"
    assert (reports / "report.md").read_text().count("test split") >= 1
    assert (reports / "plots" / "test_1.png").is_file()
    model = inference.load(str(workdir))
    test = evaluate.test_sessions(train.load_sessions(config, str(workdir)), config)
    assert [s.name for s in test] == ["test_1"]
    gold = synthetic.hidden_test_labels(config.data.root, "test_1").values
    out = postprocess.apply(model.predict(test)["test_1"]["outputs"], params)
    n = out.shape[0]
    assert abs(n - gold.shape[0]) <= 1
    expected = ccc(out[:, 1], gold[:n, 1])
    assert summary["robustness"]["normal"]["ccc_valence"] == pytest.approx(expected, abs=1e-6)


def test_test_split_without_labels_is_one_clear_error(trained, tmp_path, capsys):
    workdir, _ = trained
    empty = tmp_path / "labels"
    empty.mkdir()
    code = evaluate.main(
        ["--workdir", str(workdir), "--split", "test", "--test-labels", str(empty)]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no labelled test sessions" in err[0]


# ---------------------------------------------------------------------------- best checkpoint


@pytest.mark.parametrize(
    ("metric", "values", "best"),
    [
        ("dev/rmse_pooled/mean", [0.866, 0.851, 0.836, 0.840], 3),  # the review's case
        ("dev/ccc_pooled/mean", [0.1, 0.5, 0.3, 0.2], 2),
    ],
)
def test_best_checkpoint_follows_the_metrics_direction(tmp_path, metric, values, best):
    assert checkpointing.best_mode(metric) == ("min" if "rmse" in metric else "max")
    ckpt = checkpointing.Checkpointer(str(tmp_path), metric, async_save=False)
    for step, value in enumerate(values, 1):
        ckpt.save(step, {"w": jnp.full((2,), float(step))}, None, {}, {metric: value})
    ckpt.wait()
    assert ckpt.best_step() == best
    assert ckpt.latest_step() == len(values)
    ckpt.close()


def test_best_metric_is_validated():
    c = tiny.get_config()
    c.checkpoint.best_metric = "loss"
    with pytest.raises(config_lib.ConfigError, match="best_metric"):
        config_lib.validate(c)
    c.checkpoint.best_metric = "rmse_session_mean/valence"
    config_lib.validate(c)
    c.eval.splits = ("dev", "valid")
    with pytest.raises(config_lib.ConfigError, match="eval.splits"):
        config_lib.validate(c)


# ----------------------------------------------------------------- selection on dev, by name


def _memory_config(steps: int) -> ml_collections.ConfigDict:
    c = tiny.get_config()
    c.data.memory.train_sessions = 2
    c.data.memory.dev_sessions = 3
    c.train.num_steps = steps
    c.train.eval_every_steps = 3
    c.train.checkpoint_every_steps = 3
    c.checkpoint.async_save = False
    return c


def test_only_dev_selects_and_metrics_carry_their_split(tmp_path):
    c = _memory_config(3)
    c.eval.splits = ("train", "dev")
    metrics = train.train_and_evaluate(c, str(tmp_path / "w"))
    assert any(k.startswith("train/ccc_pooled") for k in metrics)
    assert any(k.startswith("dev/ccc_pooled") for k in metrics)
    chosen = train.selection_metrics(metrics, evaluated=True)
    assert chosen and all(k.startswith("dev/") for k in chosen)
    assert train.selection_metrics({"test/ccc_pooled/mean": 0.9}, evaluated=True) is None


def test_no_dev_split_says_there_is_nothing_to_select_on(tmp_path, caplog):
    c = _memory_config(3)
    c.eval.splits = ("train",)
    with caplog.at_level(logging.WARNING, logger="avemo"):
        train.train_and_evaluate(c, str(tmp_path / "w"))
    assert "nothing to select a checkpoint on" in caplog.text
    ckpt = checkpointing.Checkpointer(str(tmp_path / "w"), "dev/ccc_pooled/mean")
    assert ckpt.best_step() is None and ckpt.latest_step() == 3
    ckpt.close()


# ------------------------------------------- cross-fitted post-processing, tied to a checkpoint


def test_cross_fit_holds_each_session_out():
    rng = np.random.default_rng(0)
    gold = {f"dev_{k}": rng.uniform(-1, 1, (200, 2)) for k in range(3)}
    preds = {k: 0.5 * np.roll(v, -10, axis=0) + 0.3 for k, v in gold.items()}
    cfg = tiny.get_config().postprocess
    train_labels = [rng.uniform(-1, 1, (200, 2))]
    folds = postprocess.cross_fit(preds, gold, train_labels, cfg)
    for held_out, params in folds.items():
        assert held_out not in params["fitted_on"] and len(params["fitted_on"]) == 2
        others = [k for k in gold if k != held_out]
        direct = postprocess.fit(
            {k: preds[k] for k in others}, {k: gold[k] for k in others}, train_labels, cfg
        )
        assert params == direct
    with pytest.raises(ValueError, match="at least two dev sessions"):
        postprocess.cross_fit({"dev_1": preds["dev_0"]}, {"dev_1": gold["dev_0"]}, [], cfg)


def test_dev_reports_are_cross_fitted_and_latest_never_replaces_the_best_fit(tmp_path):
    workdir = tmp_path / "w"
    train.train_and_evaluate(_memory_config(3), str(workdir))  # best = step 3
    later = _memory_config(6)
    later.eval.splits = ("train",)  # step 6 has no dev metric: best stays 3, latest is 6
    train.train_and_evaluate(later, str(workdir))
    summary = evaluate.evaluate_workdir(str(workdir), split="dev", plots=False)
    assert summary["checkpoint_step"] == 3 and summary["postprocess_fit"].startswith("cross")
    saved = postprocess.load(workdir, 3)
    assert saved["checkpoint_step"] == 3
    # Each dev session's reported figure uses the fit on the *other* dev sessions.
    model = inference.load(str(workdir))
    sessions = train.load_sessions(model.config, str(workdir))
    dev = [s for s in sessions if s.split == "dev"]
    predicted = model.predict(dev)
    outputs = {s.name: predicted[s.name]["outputs"] for s in dev}
    labels = {s.name: s.arrays["labels"] for s in dev}
    train_labels = [s.arrays["labels"] for s in sessions if s.split == "train"]
    folds = postprocess.cross_fit(outputs, labels, train_labels, model.config.postprocess)
    rows = list(csv.DictReader((workdir / "reports" / "metrics.csv").open()))
    for s in dev:
        row = next(
            r
            for r in rows
            if (r["protocol"], r["stage"], r["session"]) == ("normal", "postprocessed", s.name)
        )
        out = postprocess.apply(outputs[s.name], folds[s.name])
        assert float(row["ccc_arousal"]) == pytest.approx(ccc(out[:, 0], labels[s.name][:, 0]))
    robustness = json.loads((workdir / "reports" / "summary.json").read_text())["robustness"]
    assert "in_sample_ccc_mean" in robustness["normal"]  # labelled apart, not the headline
    # --which latest: evaluated, but postprocess.json stays the best checkpoint's fit.
    evaluate.evaluate_workdir(str(workdir), split="dev", which="latest", plots=False)
    assert postprocess.load(workdir)["checkpoint_step"] == 3
    with pytest.raises(postprocess.StaleError, match="step 3"):
        postprocess.load(workdir, 6)
