"""Runs every point of a config's sweep, each in its own workdir, locally or on SLURM (submitit).

    python -m launch.sweep --config configs/X.py[:arg] --workdir ROOT \
        --executor local|slurm|population [--population] [--members K] \
        [--data-order shared|member] [--member-conv auto|loop|vmap] [--member-devices N] \
        [--workers N] [--dry-run] [--slurm.partition P --slurm.gpus_per_node G --slurm.nodes N \
         --slurm.time MIN --slurm.array_parallelism K ...]

`--executor population` trains the points that share the model's shapes in this process, K at a
time as one jitted program (`avemo.population`); points that differ in anything but the per-member
keys (seed, loss.aux_weight, train.learning_rate, model.head_dropout, model.audio_input_dropout)
form separate groups, and the command names the keys that split them. `--executor slurm
--population` submits one SLURM job per population instead of one per point.

A config file may define `get_sweep(arg=None)` returning a list of override dicts (see
`launch.hyper`); without it the sweep is the config itself (one point, "default"). Every point is
checked against the config schema before anything runs. Point `i` runs in `ROOT/<name>`, the name
built from its overrides (`aux_weight=0.1,seed=0`), with `point.json` (overrides and the exact
command) and the train loop's `config.json`. Re-running is safe: a point with a `DONE` marker (or a
`final_metrics.json` at the configured last step) is skipped; any other resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import submitit

DONE = "DONE"
POINT_FILE = "point.json"
LOG_FILE = "sweep.log"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SweepError(ValueError):
    """A sweep cannot be expanded: unreadable config, unknown key, wrong type, clashing names."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep."""

    index: int
    name: str
    overrides: dict[str, Any]
    config: ml_collections.ConfigDict
    workdir: str


# ------------------------------------------------------------------------------------ expansion


def _load_module(config_spec: str) -> tuple[Any, str | None]:
    path, _, arg = config_spec.partition(":")
    if not os.path.isfile(path):
        raise SweepError(f"config file {path} does not exist")
    if REPO_ROOT not in sys.path:  # config files import `avemo` and `configs`
        sys.path.insert(0, REPO_ROOT)
    name = "_sweep_config_" + re.sub(r"\W", "_", os.path.abspath(path))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 -- any failure to load the file is one user error
        raise SweepError(f"cannot load {path}: {type(err).__name__}: {err}") from err
    if not hasattr(module, "get_config"):
        raise SweepError(f"{path} defines no get_config()")
    return module, (arg or None)


def sweep_overrides(config_spec: str) -> list[dict[str, Any]]:
    """The override dicts of `get_sweep(arg)` (or `[{}]` for a config without a sweep)."""
    module, arg = _load_module(config_spec)
    if not hasattr(module, "get_sweep"):
        return [{}]
    points = module.get_sweep(arg)
    if not isinstance(points, Sequence) or not all(isinstance(p, Mapping) for p in points):
        raise SweepError(f"{config_spec}: get_sweep() must return a list of dicts")
    if not points:
        raise SweepError(f"{config_spec}: get_sweep() returned no points")
    return [dict(p) for p in points]


def build_config(
    config_spec: str, overrides: Mapping[str, Any], label: str = ""
) -> ml_collections.ConfigDict:
    """`get_config(arg)` with `overrides` applied and validated against the schema.

    Raises:
      SweepError: naming the point (`label`) and the unknown or mistyped key.
    """
    from avemo import config as config_lib

    module, arg = _load_module(config_spec)
    try:
        config = module.get_config(arg)
    except Exception as err:  # noqa: BLE001 -- a config that cannot be built is one user error
        raise SweepError(f"{config_spec}: get_config: {type(err).__name__}: {err}") from err
    where = f"{label}: " if label else ""
    for key, value in overrides.items():
        node, parts = config, key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise SweepError(f"{where}unknown config key {key}")
            node = node[part]
        leaf = parts[-1]
        if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
            raise SweepError(f"{where}unknown config key {key}")
        if isinstance(value, list) and isinstance(node[leaf], tuple):
            value = tuple(value)
        try:
            node[leaf] = value
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise SweepError(f"{where}config.{key}={value!r}: {err}") from err
    try:
        config_lib.validate(config)
    except config_lib.ConfigError as err:
        raise SweepError(f"{where}{err}") from err
    return config


def format_value(value: Any) -> str:
    """A value as `--config.key=` accepts it (and as it appears in point names)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return repr(tuple(value))
    return repr(value)


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key shares."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(o != key and (o == suffix or o.endswith("." + suffix)) for o in keys):
                break
        short[key] = suffix
    return short


def point_name(overrides: Mapping[str, Any], short: Mapping[str, str] | None = None) -> str:
    """`aux_weight=0.1,seed=0`: one directory name from a point's overrides."""
    if not overrides:
        return "default"
    short = short or _short_keys(list(overrides))
    parts = []
    for key, value in overrides.items():
        text = (
            value
            if isinstance(value, str)
            else ("-".join(map(str, value)) if isinstance(value, list | tuple) else repr(value))
        )
        parts.append(f"{short[key]}={text}")
    return re.sub(r"[^A-Za-z0-9._+=,-]", "_", ",".join(parts))


def expand(config_spec: str, root: str) -> list[Point]:
    """All points of the sweep, validated, each with its name and workdir under `root`.

    Raises:
      SweepError: before anything runs, for the first bad point or a name used twice.
    """
    overrides = sweep_overrides(config_spec)
    all_keys = list(dict.fromkeys(k for o in overrides for k in o))
    short = _short_keys(all_keys)
    points, seen = [], {}
    for i, o in enumerate(overrides):
        name = point_name(o, short)
        if name in seen:
            raise SweepError(
                f"points {seen[name]} and {i} have the same name {name!r} (identical overrides?)"
            )
        seen[name] = i
        config = build_config(config_spec, o, label=f"sweep point {i} ({name})")
        points.append(Point(i, name, o, config, os.path.join(os.path.abspath(root), name)))
    return points


# ------------------------------------------------------------------------------- point status


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_atomic(path: str, text: str) -> None:
    """Writes `text` to a temporary name next to `path`, then renames it into place."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def expected_steps(config: ml_collections.ConfigDict, workdir: str) -> int:
    """The step a finished run reaches (epochs are converted by the train loop's own rule)."""
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    from avemo import train
    from avemo.data import pipeline

    sessions = train.load_sessions(config, workdir)  # the prepared cache: cheap after a run
    return train.num_train_steps(config, pipeline.num_train_windows(sessions, config))


def is_finished(point: Point) -> bool:
    """DONE marker, or final metrics at the configured last step (then the marker is added)."""
    if os.path.exists(os.path.join(point.workdir, DONE)):
        return True
    metrics = _read_json(os.path.join(point.workdir, "final_metrics.json"))
    if metrics is None or point.config.train.num_steps <= 0:
        return False
    if metrics.get("step") == point.config.train.num_steps:
        mark_done(point, metrics["step"])
        return True
    return False


def mark_done(point: Point, step: int) -> None:
    write_atomic(os.path.join(point.workdir, DONE), f"{step}\n")


def finish_if_complete(point: Point) -> bool:
    """After a run exited cleanly: DONE if it reached the last step (not if it was preempted)."""
    metrics = _read_json(os.path.join(point.workdir, "final_metrics.json"))
    if metrics is None:
        return False
    if metrics.get("step") == expected_steps(point.config, point.workdir):
        mark_done(point, metrics["step"])
        return True
    return False


def command(point: Point, config_spec: str) -> list[str]:
    """The `python -m avemo.main` command line of a point."""
    path, sep, arg = config_spec.partition(":")
    spec = os.path.abspath(path) + (sep + arg if sep else "")
    return [
        sys.executable,
        "-m",
        "avemo.main",
        "--config",
        spec,
        "--workdir",
        point.workdir,
        *(f"--config.{k}={format_value(v)}" for k, v in point.overrides.items()),
    ]


def write_point_file(point: Point, config_spec: str) -> None:
    os.makedirs(point.workdir, exist_ok=True)
    record = {
        "index": point.index,
        "name": point.name,
        "config": config_spec,
        "overrides": point.overrides,
        "command": command(point, config_spec),
    }
    write_atomic(os.path.join(point.workdir, POINT_FILE), json.dumps(record, indent=2) + "\n")


# ---------------------------------------------------------------------------------- executors


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


def _run_one(point: Point, config_spec: str) -> int:
    with open(os.path.join(point.workdir, LOG_FILE), "a", encoding="utf-8") as log_file:
        proc = subprocess.run(
            command(point, config_spec),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_child_env(),
            check=False,
        )
    return proc.returncode


def run_local(points: Sequence[Point], config_spec: str, workers: int = 1) -> dict[str, str]:
    """Runs pending points as `python -m avemo.main` subprocesses, `workers` at a time."""
    status: dict[str, str] = {}

    def run(point: Point) -> tuple[str, str]:
        rc = _run_one(point, config_spec)
        if rc != 0:
            return point.name, f"failed (exit {rc}; see {os.path.join(point.workdir, LOG_FILE)})"
        return point.name, "done" if finish_if_complete(point) else "stopped early (re-run resumes)"

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for name, result in pool.map(run, points):
            status[name] = result
            print(f"  {name}: {result}", flush=True)
    return status


class PointJob(submitit.helpers.Checkpointable):
    """One point as a submitit job; on SLURM preemption or timeout it is requeued and resumes."""

    def __call__(
        self, config_spec: str, overrides: dict[str, Any], name: str, workdir: str
    ) -> dict[str, float]:
        import logging

        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain workers read absl flags
            flags.FLAGS(sys.argv[:1])
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
        logging.getLogger("avemo").setLevel(logging.INFO)

        from avemo import distributed, train

        config = build_config(config_spec, overrides, label=name)
        point = Point(-1, name, dict(overrides), config, workdir)
        if distributed.initialize():  # several tasks (nodes) per point: SLURM's environment
            distributed.quiet_unless_chief()
        import jax

        if is_finished(point):
            return _read_json(os.path.join(workdir, "final_metrics.json")) or {}
        result = train.train_and_evaluate(config, workdir)
        if jax.process_index() == 0:
            finish_if_complete(point)
        return result


class PopulationJob(submitit.helpers.Checkpointable):
    """One population (several points, one process) as a submitit job; requeued, it resumes."""

    def __call__(
        self,
        config_spec: str,
        members: list[tuple[dict[str, Any], str, str]],
        population_dir: str,
        options: dict[str, Any],
    ) -> list[dict[str, float]]:
        import logging

        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS(sys.argv[:1])
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
        logging.getLogger("avemo").setLevel(logging.INFO)
        points = [
            Point(-1, name, dict(o), build_config(config_spec, o, label=name), workdir)
            for o, name, workdir in members
        ]
        return _train_population(points, population_dir, options)


def _train_population(
    points: Sequence[Point], population_dir: str, options: Mapping[str, Any]
) -> list[dict[str, float]]:
    from avemo import population

    if all(is_finished(p) for p in points):
        return [_read_json(os.path.join(p.workdir, "final_metrics.json")) or {} for p in points]
    result = population.train_population(
        [p.config for p in points], [p.workdir for p in points], population_dir, **options
    )
    for p in points:
        finish_if_complete(p)
    return result


def plan_populations(points: Sequence[Point], members: int = 0) -> list[list[Point]]:
    """Groups of points that can share one program, each cut into populations of <= `members`."""
    from avemo import population

    populations = []
    for indices in population.group_indices([p.config for p in points]):
        group = [points[i] for i in indices]
        size = members if members > 0 else len(group)
        populations += [group[i : i + size] for i in range(0, len(group), size)]
    return populations


def describe_populations(populations: Sequence[Sequence[Point]], root: str) -> list[str]:
    """Lines naming each population, its members and the keys that split the groups."""
    from avemo import population

    lines = []
    heads = [pop[0].config for pop in populations]
    split = population.differing_keys(heads) if len(heads) > 1 else []
    for j, pop in enumerate(populations):
        pop_dir = population_dir(root, pop)
        lines.append(
            f"  population {j + 1}/{len(populations)} ({len(pop)} members, "
            f"{os.path.relpath(pop_dir, root)}): {', '.join(p.name for p in pop)}"
        )
        if split:
            values = json.loads(population.group_key(pop[0].config))
            lines.append(
                "      shapes/settings: " + ", ".join(f"{k}={values.get(k)!r}" for k in split)
            )
    if split:
        lines.append(f"  separate programs because these keys differ: {', '.join(split)}")
    return lines


def population_dir(root: str, points: Sequence[Point]) -> str:
    from avemo import population

    return os.path.join(
        os.path.abspath(root),
        "_population",
        population.population_name([p.workdir for p in points]),
    )


def run_populations(
    populations: Sequence[Sequence[Point]], root: str, options: Mapping[str, Any]
) -> dict[str, str]:
    """Trains each population in this process, one after another."""
    from avemo.main import configure_logging

    configure_logging()
    status = {}
    for pop in populations:
        _train_population(pop, population_dir(root, pop), options)
        for p in pop:
            status[p.name] = "done" if is_finished(p) else "stopped early (re-run resumes)"
            print(f"  {p.name}: {status[p.name]}", flush=True)
    return status


def submit_populations(
    populations: Sequence[Sequence[Point]],
    config_spec: str,
    root: str,
    params: Mapping[str, Any],
    options: Mapping[str, Any],
    executor: submitit.Executor | None = None,
) -> list[submitit.Job]:
    """One submitit job per population (a job array on SLURM)."""
    if executor is None:
        executor = submitit.AutoExecutor(
            folder=os.path.join(root, "_submitit", "%j"), cluster="slurm"
        )
        executor.update_parameters(**params)
    os.environ["PYTHONPATH"] = _child_env()["PYTHONPATH"]
    with executor.batch():
        jobs = [
            executor.submit(
                PopulationJob(),
                config_spec,
                [(p.overrides, p.name, p.workdir) for p in pop],
                population_dir(root, pop),
                dict(options),
            )
            for pop in populations
        ]
    for j, job in enumerate(jobs):
        print(f"  population {j + 1}: submitted as SLURM job {job.job_id}", flush=True)
    return jobs


def slurm_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """submitit AutoExecutor parameters from the `--slurm.*` flags (unset ones left out)."""
    params = {
        "slurm_partition": args.slurm_partition,
        "nodes": args.slurm_nodes,
        "tasks_per_node": args.slurm_tasks_per_node,
        "gpus_per_node": args.slurm_gpus_per_node,
        "cpus_per_task": args.slurm_cpus_per_task,
        "mem_gb": args.slurm_mem_gb,
        "timeout_min": args.slurm_time,
        "slurm_array_parallelism": args.slurm_array_parallelism,
        "slurm_account": args.slurm_account,
        "slurm_qos": args.slurm_qos,
        "slurm_constraint": args.slurm_constraint,
        "name": args.slurm_job_name,
    }
    return {k: v for k, v in params.items() if v is not None}


def submit(
    executor: submitit.Executor, points: Sequence[Point], config_spec: str
) -> list[submitit.Job]:
    """Submits one job per point (a SLURM job array when the executor supports it)."""
    os.environ["PYTHONPATH"] = _child_env()["PYTHONPATH"]  # the jobs import launch and avemo
    with executor.batch():
        jobs = [
            executor.submit(PointJob(), config_spec, p.overrides, p.name, p.workdir) for p in points
        ]
    return jobs


def run_slurm(
    points: Sequence[Point], config_spec: str, root: str, params: Mapping[str, Any]
) -> list[submitit.Job]:
    executor = submitit.AutoExecutor(folder=os.path.join(root, "_submitit", "%j"), cluster="slurm")
    executor.update_parameters(**params)
    jobs = submit(executor, points, config_spec)
    for point, job in zip(points, jobs, strict=True):
        print(f"  {point.name}: submitted as SLURM job {job.job_id}", flush=True)
    return jobs


# ---------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m launch.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="configs/X.py or configs/X.py:arg")
    parser.add_argument("--workdir", required=True, help="sweep root; one folder per point")
    parser.add_argument("--executor", choices=("local", "slurm", "population"), default="local")
    parser.add_argument("--workers", type=int, default=1, help="local: points run at once")
    pop = parser.add_argument_group("population training (avemo.population)")
    pop.add_argument(
        "--population",
        action="store_true",
        help="slurm: one job per population (--executor population implies it)",
    )
    pop.add_argument("--members", type=int, default=0, help="members per population (0: all)")
    pop.add_argument(
        "--data-order",
        choices=("shared", "member"),
        default="shared",
        help="shared: one batch per step feeds all members; member: each its own seed's order",
    )
    pop.add_argument(
        "--member-conv",
        choices=("auto", "loop", "vmap"),
        default="auto",
        help="members' face CNNs: loop (CPU), vmap (GPU), auto picks by backend",
    )
    pop.add_argument(
        "--member-devices", type=int, default=-1, help="devices on the members mesh axis"
    )
    parser.add_argument("--dry-run", action="store_true", help="list points and commands only")
    slurm = parser.add_argument_group("SLURM (--executor slurm, via submitit)")
    for flag, kind, text in (
        ("partition", str, "partition"),
        ("nodes", int, "nodes per point"),
        ("tasks_per_node", int, "tasks per node (1: one process per node using all its GPUs)"),
        ("gpus_per_node", int, "GPUs per node"),
        ("cpus_per_task", int, "CPUs per task"),
        ("mem_gb", int, "memory per node (GB)"),
        ("time", int, "time limit per job (minutes)"),
        ("array_parallelism", int, "points running at once"),
        ("account", str, "account"),
        ("qos", str, "QOS"),
        ("constraint", str, "node constraint"),
        ("job_name", str, "job name"),
    ):
        slurm.add_argument(f"--slurm.{flag}", dest=f"slurm_{flag}", type=kind, help=text)
    args = parser.parse_args(argv)
    if args.executor == "population":
        args.population = True
    if args.population and args.executor == "local":
        parser.error("--population runs with --executor population or --executor slurm")
    if args.executor == "slurm":
        args.slurm_tasks_per_node = args.slurm_tasks_per_node or 1
        args.slurm_job_name = args.slurm_job_name or "avemo-sweep"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        points = expand(args.config, args.workdir)
    except SweepError as err:
        print(f"launch.sweep: error: {err}", file=sys.stderr)
        return 2
    pending = [p for p in points if not is_finished(p)]
    to_run = {p.name for p in pending}
    print(
        f"{len(points)} point(s) in {os.path.abspath(args.workdir)}; "
        f"{len(points) - len(pending)} finished, {len(pending)} to run.",
        flush=True,
    )
    for p in points:
        state = "to run" if p.name in to_run else "finished"
        print(f"  [{p.index}] {p.name}: {state}  {json.dumps(p.overrides)}", flush=True)
        if args.dry_run and p.name in to_run:
            print("      " + " ".join(command(p, args.config)), flush=True)
    root = os.path.abspath(args.workdir)
    populations = plan_populations(pending, args.members) if args.population else []
    if populations:
        print(f"{len(populations)} population(s):", flush=True)
        for line in describe_populations(populations, root):
            print(line, flush=True)
    if args.dry_run:
        if args.executor == "slurm":
            print(f"submitit parameters: {slurm_parameters(args)}")
        return 0
    for p in pending:
        write_point_file(p, args.config)
    if not pending:
        return 0
    if args.population:
        options = {
            "data_order": args.data_order,
            "member_conv": args.member_conv,
            "member_devices": args.member_devices,
        }
        if args.executor == "slurm":
            submit_populations(populations, args.config, root, slurm_parameters(args), options)
            return 0
        run_populations(populations, root, options)  # failures raise; stopped early: exit 0
        return 0
    if args.executor == "local":
        status = run_local(pending, args.config, args.workers)
        return 1 if any(s.startswith("failed") for s in status.values()) else 0
    run_slurm(pending, args.config, os.path.abspath(args.workdir), slurm_parameters(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
