"""launch.collect: seeds grouped, mean ± std over seeds, unfinished points left out."""

import csv
import json
import statistics

import pytest

from launch import collect
from launch import sweep as sweep_lib

ARO, VAL = "dev/ccc_pooled/arousal", "dev/ccc_pooled/valence"


def _point(root, index, overrides, metrics, done=True):
    workdir = root / sweep_lib.point_name(overrides)
    workdir.mkdir(parents=True)
    (workdir / "point.json").write_text(json.dumps({"index": index, "overrides": overrides}))
    (workdir / "final_metrics.json").write_text(json.dumps({"step": 10, **metrics}))
    if done:
        (workdir / sweep_lib.DONE).write_text("10\n")


def test_collect_groups_seeds_and_averages(tmp_path):
    values = {0.0: [(0.2, 0.1), (0.4, 0.3), (0.9, 0.2)], 0.3: [(0.5, 0.6), (0.7, 0.2)]}
    index = 0
    for weight, runs in values.items():
        for seed, (aro, val) in enumerate(runs):
            _point(
                tmp_path,
                index,
                {"loss.aux_weight": weight, "seed": seed},
                {ARO: aro, VAL: val, "dev/rmse_pooled/mean": 1.0},
            )
            index += 1
    _point(
        tmp_path, index, {"loss.aux_weight": 0.3, "seed": 2}, {ARO: 99.0, VAL: 99.0}, done=False
    )  # preempted: not averaged, counted as incomplete

    assert collect.main([str(tmp_path)]) == 0
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["loss.aux_weight"] for r in rows] == ["0.0", "0.3"]
    for row, (weight, runs) in zip(rows, values.items()):
        assert int(row["num_seeds"]) == len(runs)
        assert row["incomplete"] == ("1" if weight == 0.3 else "0")
        for i, key in enumerate((ARO, VAL)):
            xs = [r[i] for r in runs]
            assert float(row[f"{key}/mean"]) == pytest.approx(statistics.mean(xs), rel=1e-5)
            assert float(row[f"{key}/std"]) == pytest.approx(statistics.stdev(xs), rel=1e-5)
    markdown = (tmp_path / "results.md").read_text().splitlines()
    assert markdown[0] == f"| loss.aux_weight | seeds | {ARO} | {VAL} | incomplete |"
    assert markdown[2] == "| 0.0 | 3 (0 1 2) | 0.5000 ± 0.3606 | 0.2000 ± 0.1000 | 0 |"
    assert markdown[3] == "| 0.3 | 2 (0 1) | 0.6000 ± 0.1414 | 0.4000 ± 0.2828 | 1 |"
    assert not list(tmp_path.glob("*.tmp*"))


def test_collect_chosen_metrics_and_single_seed(tmp_path):
    _point(tmp_path, 0, {"model.gate": "fixed"}, {ARO: 0.5, "dev/rmse_pooled/mean": 0.25})
    rows = collect.collect(str(tmp_path), ["dev/rmse_pooled/mean"])
    assert len(rows) == 1 and rows[0].values == {"dev/rmse_pooled/mean": [0.25]}
    assert collect.mean_std([0.25]) == (0.25, 0.0)
    assert "0.2500 ± 0.0000" in (tmp_path / "results.md").read_text()


def test_collect_reads_report_metrics_from_the_evaluation_summary(tmp_path):
    for seed, drop in enumerate((0.1, 0.3)):
        _point(tmp_path, seed, {"loss.aux_weight": 0.1, "seed": seed}, {ARO: 0.5, VAL: 0.5})
        reports = (
            tmp_path / sweep_lib.point_name({"loss.aux_weight": 0.1, "seed": seed}) / "reports"
        )
        reports.mkdir()
        summary = {"robustness": {"face_removed": {"ccc_mean_drop": drop}}}
        (reports / "summary.json").write_text(json.dumps(summary))
    rows = collect.gather(str(tmp_path), ["report/face_removed/ccc_mean_drop"])
    assert rows[0].values["report/face_removed/ccc_mean_drop"] == [0.1, 0.3]
