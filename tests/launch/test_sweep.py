"""Sweep expansion, validation before running, and re-runs that skip finished points."""

import json
import os
import subprocess
import sys

import pytest

from launch import hyper
from launch import sweep as sweep_lib
from tests.conftest import ROOT

CONFIG = os.path.join(ROOT, "tests", "launch", "sweep_tiny.py")


def test_hyper_product_zip_and_sweep():
    grid = hyper.product(
        hyper.sweep("a", [1, 2]), hyper.zipit(hyper.sweep("b", "xy"), hyper.sweep("c", [0.1, 0.2]))
    )
    assert grid == [
        {"a": 1, "b": "x", "c": 0.1},
        {"a": 1, "b": "y", "c": 0.2},
        {"a": 2, "b": "x", "c": 0.1},
        {"a": 2, "b": "y", "c": 0.2},
    ]
    with pytest.raises(ValueError, match="equal length"):
        hyper.zipit(hyper.sweep("a", [1, 2]), hyper.sweep("b", [1]))
    with pytest.raises(ValueError, match="same key"):
        hyper.product(hyper.sweep("a", [1]), hyper.fixed("a", 2))


def test_expansion_gives_expected_points_names_and_configs(tmp_path):
    points = sweep_lib.expand(CONFIG + ":grid", str(tmp_path))
    assert [p.name for p in points] == [
        f"aux_weight={w},gate={g},seed={s}"
        for w, g in ((0.0, "learned"), (1.0, "fixed"))
        for s in range(3)
    ]
    assert [p.workdir for p in points] == [str(tmp_path / p.name) for p in points]
    last = points[-1]
    assert last.overrides == {"loss.aux_weight": 1.0, "model.gate": "fixed", "seed": 2}
    assert (last.config.loss.aux_weight, last.config.model.gate, last.config.seed) == (
        1.0,
        "fixed",
        2,
    )
    assert last.config.train.num_steps == 2  # the rest comes from get_config()
    assert points[0].config.model.gate == "learned"


def test_point_names_use_shortest_unambiguous_key_suffix():
    assert sweep_lib.point_name({}) == "default"
    name = sweep_lib.point_name(
        {
            "model.alexnet.dropout": 0.5,
            "data.dropout": 0.1,
            "model.head_dropout": 0.2,
            "model.alexnet.conv_features": (4, 8),
            "loss.main": "rmse+ccc",
        }
    )
    assert name == (
        "alexnet.dropout=0.5,data.dropout=0.1,head_dropout=0.2,conv_features=4-8,main=rmse+ccc"
    )


def test_unknown_or_mistyped_key_is_rejected_before_anything_runs(tmp_path):
    root = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "launch.sweep", "--config", CONFIG + ":bad", "--workdir", str(root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "launch.sweep: error: sweep point 1 (aux_wieght=0.3): unknown config key loss.aux_wieght"
    ]
    assert not root.exists()  # not even the first (valid) point was started
    with pytest.raises(sweep_lib.SweepError, match="config.model.gate"):
        sweep_lib.build_config(CONFIG, {"model.gate": "sometimes"})
    with pytest.raises(sweep_lib.SweepError, match="loss.aux_weight"):
        sweep_lib.build_config(CONFIG, {"loss.aux_weight": "heavy"})


def _sweep(root, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.sweep",
            "--config",
            CONFIG,
            "--workdir",
            str(root),
            "--workers",
            "2",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def _snapshot(root):
    return {
        os.path.relpath(os.path.join(d, f), root): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(root)
        for f in files
    }


def test_local_sweep_runs_points_then_rerun_skips_them(tmp_path):
    root = tmp_path / "sweep"
    first = _sweep(root)
    assert first.returncode == 0, first.stdout + first.stderr
    for name, weight in (("aux_weight=0.0", 0.0), ("aux_weight=0.3", 0.3)):
        workdir = root / name
        assert json.loads((workdir / "config.json").read_text())["loss"]["aux_weight"] == weight
        point = json.loads((workdir / "point.json").read_text())
        assert point["overrides"] == {"loss.aux_weight": weight}
        assert f"--config.loss.aux_weight={weight}" in point["command"]
        assert json.loads((workdir / "final_metrics.json").read_text())["step"] == 2
        assert (workdir / sweep_lib.DONE).exists()
        assert (workdir / "checkpoints" / "2").is_dir()
    before = _snapshot(root)

    again = _sweep(root)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 finished, 0 to run" in again.stdout
    assert _snapshot(root) == before  # nothing rewritten: no point ran again

    # An unfinished point (no DONE, metrics short of the last step) is run again and resumes.
    unfinished = root / "aux_weight=0.3"
    (unfinished / sweep_lib.DONE).unlink()
    metrics = json.loads((unfinished / "final_metrics.json").read_text())
    (unfinished / "final_metrics.json").write_text(json.dumps(dict(metrics, step=1)))
    third = _sweep(root)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "1 finished, 1 to run" in third.stdout
    assert (unfinished / sweep_lib.DONE).exists()
    assert json.loads((unfinished / "final_metrics.json").read_text())["step"] == 2
    assert "Resumed from" in (unfinished / sweep_lib.LOG_FILE).read_text()
    assert _snapshot(root / "aux_weight=0.0") == {
        k.split(os.sep, 1)[1]: v for k, v in before.items() if k.startswith("aux_weight=0.0")
    }


def test_slurm_flags_become_submitit_parameters():
    args = sweep_lib.parse_args(
        [
            "--config",
            CONFIG,
            "--workdir",
            "w",
            "--executor",
            "slurm",
            "--slurm.partition",
            "gpu",
            "--slurm.gpus_per_node",
            "4",
            "--slurm.nodes",
            "2",
            "--slurm.time",
            "90",
            "--slurm.array_parallelism",
            "3",
        ]
    )
    assert sweep_lib.slurm_parameters(args) == {
        "slurm_partition": "gpu",
        "nodes": 2,
        "tasks_per_node": 1,
        "gpus_per_node": 4,
        "timeout_min": 90,
        "slurm_array_parallelism": 3,
        "name": "avemo-sweep",
    }


def test_fusion_ablation_variants_change_one_key_over_the_rows_seeds(tmp_path):
    spec = os.path.join(ROOT, "configs", "fusion_ablation.py")
    variant = ":face_query/hard|loss.modality_head_weight=2.0"
    points = sweep_lib.expand(spec + variant, str(tmp_path))
    assert [p.config.seed for p in points] == [0, 1, 2]
    for p in points:
        assert p.config.loss.modality_head_weight == 2.0
        assert p.config.model.attention_query == "face"
        assert p.config.data.synthetic.voice_valence == 0.35
    plain = sweep_lib.expand(spec + ":face_query", str(tmp_path))[0].config
    assert plain.loss.modality_head_weight == 0.5
    with pytest.raises(sweep_lib.SweepError, match="variant model.not_a_key=1: unknown key"):
        sweep_lib.expand(spec + ":face_query|model.not_a_key=1", str(tmp_path))


def test_fusion_ablation_rows_add_the_speech_pooled_functionals_the_label_delay_then_the_gates():
    """The default is the last row (a gate per dimension); every row before speech_pool reads the
    paper's per-step functionals with the previous default's audio input dropout, the audio-only
    row keeps its own; the single-modality rows share the default's label delay and have no
    gate."""
    from configs import default, fusion_ablation

    assert fusion_ablation.ROWS[-6:] == (
        "speech_pool", "label_delay", "gate_per_output", "face_weight", "face_continued",
        "voice_weight",
    )  # fmt: skip
    assert fusion_ablation.get_config("default") == default.get_config()
    assert default.get_config().train.stage_schedule == "face_continued"
    assert fusion_ablation.get_config("face_weight").train.stage_schedule == "restart"
    for row in ("audio", "video", "face_tower", "paper"):  # no face stage to continue
        assert fusion_ablation.get_config(row).train.stage_schedule == "restart"
    assert default.get_config().model.gate_per_output
    assert default.get_config().postprocess.face_weight
    assert default.get_config().postprocess.voice_weight
    assert not fusion_ablation.get_config("face_continued").postprocess.voice_weight
    assert fusion_ablation.get_config("face_continued").postprocess.face_weight
    assert not fusion_ablation.get_config("gate_per_output").postprocess.face_weight
    assert fusion_ablation.get_config("gate_per_output").model.gate_per_output
    assert not fusion_ablation.get_config("label_delay").model.gate_per_output
    assert fusion_ablation.get_config("label_delay").data.label_delay_steps > 0
    for row in ("audio", "video", "paper"):
        assert not fusion_ablation.get_config(row).model.gate_per_output
        assert not fusion_ablation.get_config(row).postprocess.face_weight
        assert not fusion_ablation.get_config(row).postprocess.voice_weight
    delay = default.get_config().data.label_delay_steps
    assert delay > 0 and fusion_ablation.get_config("speech_pool").data.label_delay_steps == 0
    assert fusion_ablation.get_config("paper").data.label_delay_steps == 0
    for row in ("audio", "video", "audio/hard"):
        assert fusion_ablation.get_config(row).data.label_delay_steps == delay
    assert default.get_config().audio.features.speech_pooled_seconds > 0
    face_stage = fusion_ablation.get_config("face_stage")
    assert face_stage.audio.features.speech_pooled_seconds == 0.0
    assert face_stage.model.audio_input_dropout == 0.5
    assert fusion_ablation.get_config("paper").model.audio_input_dropout == 0.0
    audio = fusion_ablation.get_config("audio")
    assert audio.audio.features.speech_pooled_seconds == 4.0
    assert audio.model.audio_input_dropout == fusion_ablation.AUDIO_ONLY_INPUT_DROPOUT
