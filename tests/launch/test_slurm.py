"""The SLURM path on a real single-node cluster (launch/slurm/local_cluster.sh; CI brings it up).

Skipped with a one-line reason where no cluster answers; with AVEMO_REQUIRE_SLURM=1 (set by
.ci/run) a missing cluster fails instead. Every job is tiny (configs/tiny.py, a few steps).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from avemo.reporting.writers import read_metrics
from launch import sweep as sweep_lib
from tests.conftest import ROOT

TIMEOUT = 900  # seconds a job may take on a busy 2-core machine
TINY = ["--config.train.eval_every_steps=100000", "--config.train.checkpoint_every_steps=100000"]


def _missing_cluster() -> str | None:
    if shutil.which("sbatch") is None:
        return "SLURM is not installed (no sbatch; run launch/slurm/local_cluster.sh as root)"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return "sinfo timed out: no SLURM controller answers"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*") in ("idle", "mix", "alloc") for s in states):
        return f"no usable SLURM node (sinfo: {(out.stdout + out.stderr).strip()[:80]!r})"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _missing_cluster()
    if reason is not None:
        if os.environ.get("AVEMO_REQUIRE_SLURM") == "1":
            pytest.fail(f"AVEMO_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",) and "SLURM" not in k}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = ROOT
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _job_state(job: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job], capture_output=True, text=True, check=False
    )
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def _wait(job: str, until=lambda s: s.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED")):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        state = _job_state(job)
        if until(state):
            return state
        time.sleep(1)
    subprocess.run(["scancel", job], check=False)
    raise AssertionError(f"SLURM job {job} did not finish in {TIMEOUT} s: {_job_state(job)}")


def _sbatch(*args: str) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", *args], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def _template(tmp_path, workdir, tasks: int, steps: int, *extra: str) -> str:
    """launch/slurm/train.sbatch on this node: `tasks` processes, CPU only."""
    return _sbatch(
        "--nodes=1",
        f"--ntasks-per-node={tasks}",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        "--time=30",
        f"--output={tmp_path}/%x-%j.out",
        "launch/slurm/train.sbatch",
        "configs/tiny.py",
        str(workdir),
        f"--config.train.num_steps={steps}",
        *extra,
    )


def _local_run(workdir, steps: int, *extra: str) -> None:
    cmd = [sys.executable, "-m", "avemo.main", "--config", "configs/tiny.py"]
    cmd += ["--workdir", str(workdir), f"--config.train.num_steps={steps}", *extra]
    subprocess.run(cmd, cwd=ROOT, env=_env(), check=True, capture_output=True)


def _final(workdir) -> dict:
    return json.loads((workdir / "final_metrics.json").read_text())


def _assert_close(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys() and a["step"] == b["step"]
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=1e-6, err_msg=key)


def _wait_done(points, seconds=TIMEOUT) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and not all(
        os.path.exists(os.path.join(p.workdir, sweep_lib.DONE)) for p in points
    ):
        time.sleep(1)
    assert all(os.path.exists(os.path.join(p.workdir, sweep_lib.DONE)) for p in points)


def _sweep(root, config, *extra):
    cmd = [sys.executable, "-m", "launch.sweep", "--config", config, "--workdir", str(root)]
    cmd += ["--executor", "slurm", "--slurm.time", "30", "--slurm.cpus_per_task", "1", *extra]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_sweep_runs_to_completion_through_submitit(cluster, tmp_path):  # noqa: ARG001
    config = os.path.join(ROOT, "tests", "launch", "sweep_tiny.py")
    out = _sweep(tmp_path / "sweep", config)
    assert out.count("submitted as SLURM job") == 2
    points = sweep_lib.expand(config, str(tmp_path / "sweep"))
    _wait_done(points)
    for p in points:
        assert _final(tmp_path / "sweep" / p.name)["step"] == 2


def test_population_sweep_submitted_to_slurm(cluster, tmp_path):  # noqa: ARG001
    config = os.path.join(ROOT, "tests", "launch", "population_tiny.py")
    out = _sweep(tmp_path / "pop", config, "--population")
    assert "population 1: submitted as SLURM job" in out and "2 members" in out
    points = sweep_lib.expand(config, str(tmp_path / "pop"))
    _wait_done(points)
    for p in points:
        assert _final(tmp_path / "pop" / p.name)["step"] == p.config.train.num_steps
        assert (tmp_path / "pop" / p.name / "checkpoints").is_dir()


def test_sbatch_template_two_tasks_equal_one_process(cluster, tmp_path):  # noqa: ARG001
    extra = ["--config.train.eval_every_steps=4", "--config.train.log_every_steps=1"]
    job = _template(tmp_path, tmp_path / "two", 2, 4, *extra)
    _local_run(tmp_path / "one", 4, *extra)
    state = _wait(job)
    log = next(tmp_path.glob(f"*-{job}.out")).read_text()
    assert state["JobState"] == "COMPLETED", log
    assert "process 0 of 2" in log and "process 1 of 2" in log
    _assert_close(_final(tmp_path / "two"), _final(tmp_path / "one"), rtol=1e-4)


def test_requeued_job_saves_on_sigterm_and_resumes_to_the_same_result(cluster, tmp_path):  # noqa: ARG001
    steps = 400
    extra = [*TINY, "--config.train.log_every_steps=1", "--config.eval.report_at_end=false"]
    job = _template(tmp_path, tmp_path / "requeued", 1, steps, *extra)
    _wait(job, lambda s: s.get("JobState") == "RUNNING")
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        rows = read_metrics(str(tmp_path / "requeued")) if (tmp_path / "requeued").exists() else []
        if rows and rows[-1]["step"] >= 3:
            break
        time.sleep(0.05)
    subprocess.run(["scontrol", "requeue", job], check=True)
    # Slurm holds a requeued job back for a while (its BeginTime, ~2 minutes): once it is
    # pending again, let it start now, beside the straight run.
    _wait(job, lambda s: s.get("JobState") == "PENDING")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    _local_run(tmp_path / "straight", steps, *extra)
    state = _wait(job, lambda s: s.get("JobState") == "COMPLETED" and s.get("Restarts") != "0")
    log = next(tmp_path.glob(f"*-{job}.out")).read_text()  # the requeued run's output
    assert int(state["Restarts"]) >= 1
    assert "Resumed from" in log, log
    resumed_at = int(re.search(r"at step (\d+)", log.split("Resumed from", 1)[1]).group(1))
    assert 3 <= resumed_at < steps  # saved on SIGTERM mid-run, not at the end
    trained = [r["step"] for r in read_metrics(str(tmp_path / "requeued")) if "train/loss" in r]
    assert trained == list(range(1, steps + 1))  # each step once: no step lost or repeated
    _assert_close(_final(tmp_path / "requeued"), _final(tmp_path / "straight"), rtol=1e-6)
