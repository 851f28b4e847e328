"""Aggregates a sweep's points into one table: mean ± std over seeds of chosen dev metrics.

    python -m launch.collect ROOT [--metrics dev/ccc_pooled/arousal,dev/ccc_pooled/valence]
                                  [--seed-key seed]

Reads `ROOT/*/point.json` (overrides) and `final_metrics.json`; a metric named
`report/<protocol>/<name>` is read from the point's evaluation report instead
(`reports/summary.json`, e.g. `report/face_removed/ccc_mean`,
`report/normal/gate_availability_corr`). Points whose overrides differ
only in the seed form one row. Only finished points (`DONE`, see `launch.sweep`) are aggregated;
unfinished ones are counted in the `incomplete` column. Writes `ROOT/results.md` and
`ROOT/results.csv` atomically and prints the Markdown table. The std is the sample standard
deviation (ddof=1) over seeds; with a single seed it is reported as 0.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from launch import sweep as sweep_lib

DEFAULT_METRICS = ("dev/ccc_pooled/arousal", "dev/ccc_pooled/valence")


@dataclasses.dataclass
class Row:
    """Points that differ only in the seed."""

    settings: dict[str, Any]
    seeds: list[Any] = dataclasses.field(default_factory=list)
    values: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    incomplete: int = 0


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for fewer than two values); NaN if empty."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def gather(root: str, metrics: Sequence[str], seed_key: str = "seed") -> list[Row]:
    """Rows in sweep order, one per setting of the non-seed overrides."""
    points = []
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry, sweep_lib.POINT_FILE)
        if os.path.isfile(path):
            points.append((os.path.join(root, entry), _read_json(path)))
    points.sort(key=lambda p: (p[1].get("index", 0), p[1].get("name", "")))
    rows: dict[str, Row] = {}
    for workdir, point in points:
        overrides = point.get("overrides", {})
        settings = {k: v for k, v in overrides.items() if k != seed_key}
        row = rows.setdefault(json.dumps(settings, sort_keys=True), Row(settings))
        metrics_path = os.path.join(workdir, "final_metrics.json")
        if not (
            os.path.exists(os.path.join(workdir, sweep_lib.DONE)) and os.path.exists(metrics_path)
        ):
            row.incomplete += 1
            continue
        final = _read_json(metrics_path)
        summary_path = os.path.join(workdir, "reports", "summary.json")
        if os.path.exists(summary_path):
            robustness = _read_json(summary_path).get("robustness", {})
            for protocol, values in robustness.items():
                for key, value in values.items():
                    final[f"report/{protocol}/{key}"] = value
        seed = overrides.get(seed_key)
        if seed is None and os.path.exists(os.path.join(workdir, "config.json")):
            seed = _read_json(os.path.join(workdir, "config.json")).get(seed_key)
        row.seeds.append("-" if seed is None else seed)
        for name in metrics:
            if name in final and final[name] is not None:
                row.values.setdefault(name, []).append(float(final[name]))
    return list(rows.values())


def _fmt(value: Any) -> str:
    return sweep_lib.format_value(value)


def tables(rows: Sequence[Row], metrics: Sequence[str]) -> tuple[str, str]:
    """(Markdown, CSV) of the rows."""
    keys = list(dict.fromkeys(k for r in rows for k in r.settings))
    md_head = [*keys, "seeds", *metrics, "incomplete"]
    md = ["| " + " | ".join(md_head) + " |", "|" + "---|" * len(md_head)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            *keys,
            "num_seeds",
            "seeds",
            *(f"{m}/{s}" for m in metrics for s in ("mean", "std")),
            "incomplete",
        ]
    )
    for row in rows:
        settings = [_fmt(row.settings[k]) if k in row.settings else "" for k in keys]
        stats = [mean_std(row.values.get(m, [])) for m in metrics]
        cells = [f"{m:.4f} ± {s:.4f}" if not math.isnan(m) else "—" for m, s in stats]
        seeds = " ".join(map(str, row.seeds))
        md.append(
            "| "
            + " | ".join(
                [
                    *settings,
                    f"{len(row.seeds)} ({seeds})" if row.seeds else "0",
                    *cells,
                    str(row.incomplete),
                ]
            )
            + " |"
        )
        writer.writerow(
            [
                *settings,
                len(row.seeds),
                seeds,
                *(f"{v:.6g}" for pair in stats for v in pair),
                row.incomplete,
            ]
        )
    return "\n".join(md) + "\n", out.getvalue()


def collect(
    root: str, metrics: Sequence[str] = DEFAULT_METRICS, seed_key: str = "seed"
) -> list[Row]:
    """Writes `root/results.md` and `root/results.csv`; returns the rows."""
    rows = gather(root, metrics, seed_key)
    markdown, csv_text = tables(rows, metrics)
    for name, text in (("results.md", markdown), ("results.csv", csv_text)):
        sweep_lib.write_atomic(os.path.join(root, name), text)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.collect",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", help="the sweep's --workdir")
    parser.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help="comma-separated keys of final_metrics.json",
    )
    parser.add_argument("--seed-key", default="seed", help="override averaged over")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not os.path.isdir(args.root):
        print(f"launch.collect: error: {args.root} is not a directory", file=sys.stderr)
        return 2
    metrics = [m for m in args.metrics.split(",") if m]
    rows = collect(args.root, metrics, args.seed_key)
    if not rows:
        print(
            f"launch.collect: error: no sweep points (*/point.json) in {args.root}", file=sys.stderr
        )
        return 2
    with open(os.path.join(args.root, "results.md"), encoding="utf-8") as f:
        print(f.read(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
