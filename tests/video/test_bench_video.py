"""Smoke test of the video benchmark entry point (numbers are not asserted: timing is no test)."""

from __future__ import annotations

from avemo.bench import video as bench_video


def test_benchmark_runs_and_reports_rate_and_split(capsys):
    assert bench_video.main(["--seconds", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "frames/s" in out
    for stage in ("decode + timing", "detect", "smooth + crop"):
        assert stage in out
    assert "faces found on 100.0% of steps" in out
