"""Where a train step's device time goes: `python -m avemo.bench profile [args]`.

    python -m avemo.bench profile --models paper --variant bf16 --batch 48x25 [--top 25]
        [--set KEY=VALUE ...] [--out DIR]

Traces a few steps of the jitted train step (`jax.profiler.trace`), reads the trace back with
`jax.profiler.ProfileData` (no TensorBoard needed) and sums the device time of every XLA
operation over the traced steps. Each row joins the operation with its instruction in the
compiled HLO (its kind -- convolution forward / input gradient / weight gradient, fusion, copy,
... -- and result shape), so the table says which layer and which pass the time is spent in.
`--out DIR` keeps the trace and the compiled HLO text for a closer look.

On a GPU the rows are the device's kernels (the "XLA Ops" line of the device plane); on a CPU,
the XLA CPU runtime's thunks. Figures are per step (total over the traced steps / steps).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

import jax
import numpy as np

# `%name = type[shape]{layout} opcode(...)` in HLO text (a tuple result in parentheses); custom
# calls name their target.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\(.*?\)|\S+)\s+([\w\-]+)\(")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_KIND = re.compile(r"kind=(k\w+)")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def hlo_instructions(hlo_text: str) -> dict[str, str]:
    """{instruction name: "opcode result-shape"} of every instruction in HLO text; a custom call
    is named by its target (e.g. `__cudnn$convBackwardFilter`), a fusion by its kind and the
    ops its computation holds (convolution, reduce, dot, ...)."""
    computations: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header and "=" not in line.split("{")[0]:
            current = header.group(1)
            computations[current] = []
            continue
        m = _INSTRUCTION.match(line)
        if m and current is not None:
            computations[current].append(m.group(3))
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        if opcode == "custom-call":
            target = _TARGET.search(line)
            opcode = target.group(1) if target else opcode
        elif opcode == "fusion":
            kind = _KIND.search(line)
            called = _CALLS.search(line)
            inner = collections.Counter(computations.get(called.group(1), [])) if called else {}
            notable = [
                op
                for op in (
                    "convolution",
                    "dot",
                    "reduce",
                    "reduce-window",
                    "select-and-scatter",
                    "scatter",
                    "transpose",
                    "dynamic-update-slice",
                    "custom-call",
                )
                if op in inner
            ]
            opcode = f"fusion({kind.group(1) if kind else '?'}{':' if notable else ''}"
            opcode += ",".join(notable) + ")"
        out[name] = f"{opcode} {shape.split('{')[0]}"
    return out


def hlo_scopes(hlo_text: str, depth: int = 3) -> dict[str, str]:
    """{instruction name: "fwd|bwd module/path"}: the flax module an instruction (a fusion: its
    root) comes from, read from its `op_name` metadata -- `transpose(...)` marks the backward
    pass -- cut to `depth` levels, e.g. "bwd BimodalModel._face_maps/alexnet/conv1" (depth 3)."""
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        meta = re.search(r'op_name="([^"]+)"', line)
        if not m or not meta:
            continue
        parts = meta.group(1).split("/")
        direction = "bwd" if any(p.startswith("transpose(") for p in parts) else "fwd"
        path = [p for p in parts[1:-1] if "(" not in p and p not in ("while", "body", "cond")]
        out[m.group(1)] = f"{direction} {'/'.join(path[:depth]) or parts[-1]}"
    return out


def device_op_times(xplane_path: str) -> tuple[dict[str, float], str]:
    """{op name: total ns} summed over the trace's device planes (GPU/TPU "XLA Ops" lines), or
    over the host's XLA thunks where there is no device plane (CPU). Returns the sums and which
    source they came from."""
    from jax.profiler import ProfileData

    data = ProfileData.from_file(xplane_path)
    totals: dict[str, float] = collections.defaultdict(float)
    device_planes = [p for p in data.planes if p.name.startswith("/device:")]
    for plane in device_planes:
        lines = list(plane.lines)
        ops = [line for line in lines if line.name == "XLA Ops"]
        # Without an "XLA Ops" line, the kernels of the stream lines, by their HLO op.
        for line in ops or [line for line in lines if line.name.startswith("Stream")]:
            for event in line.events:
                stats = dict(event.stats)
                totals[str(stats.get("hlo_op", event.name))] += event.duration_ns
    if totals:
        return dict(totals), "device"
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats:
                    totals[str(stats["hlo_op"])] += event.duration_ns
    return dict(totals), "host XLA thunks"


def profile_step(step, state, batch, rng, steps: int, out_dir: str) -> tuple[dict, str, float]:
    """Traces `steps` calls of the compiled train `step` after two warm-up calls; returns
    ({op: ns per step}, source, wall seconds per step while tracing)."""
    for _ in range(2):
        state, metrics = step(state, batch, rng)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    with jax.profiler.trace(out_dir):
        for _ in range(steps):
            state, metrics = step(state, batch, rng)
        jax.block_until_ready(metrics)
    wall = (time.perf_counter() - start) / steps
    paths = glob.glob(os.path.join(out_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise SystemExit(f"no trace was written under {out_dir}")
    totals, source = device_op_times(max(paths, key=os.path.getmtime))
    return {k: v / steps for k, v in totals.items()}, source, wall


def main(argv: list[str]) -> None:
    from avemo.bench import train as bench_train

    parser = argparse.ArgumentParser(prog="python -m avemo.bench profile")
    parser.add_argument("--models", default="default", help="default or paper")
    parser.add_argument("--variant", default="e2e", help="e2e, frozen or bf16")
    parser.add_argument("--batch", default="", help="windows x steps, e.g. 48x25")
    parser.add_argument("--steps", type=int, default=5, help="traced steps")
    parser.add_argument("--top", type=int, default=25, help="rows of the table")
    parser.add_argument("--out", default="", help="keep the trace and the HLO text here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    sys.path.insert(0, ".")
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1])
    overrides = bench_train._overrides(args.set)
    name = args.models if args.variant in ("", "e2e") else f"{args.models}:{args.variant}"
    config = bench_train._variant_config(name, args.batch, overrides)
    batch = bench_train._batch(config, np.random.default_rng(0))
    # the train bench's runner: the step, its state and a pre-made batch (for the frozen
    # variant, of the frozen CNN's cached feature maps)
    runner = bench_train._Runner(
        config, name, batch, bench_train.bench_sessions(config), 1, overrides
    )
    trainer, state, batch = runner.trainer, runner.state, runner.batch
    out_dir = args.out or tempfile.mkdtemp(prefix="avemo-profile-")
    os.makedirs(out_dir, exist_ok=True)
    compiled = trainer.train_step.lower(state, batch, trainer.base_rng).compile()
    hlo = compiled.as_text()
    with open(os.path.join(out_dir, "train_step.hlo.txt"), "w") as f:
        f.write(hlo)
    kinds = hlo_instructions(hlo)
    scopes = hlo_scopes(hlo)
    per_step, source, wall = profile_step(
        compiled, state, batch, trainer.base_rng, args.steps, out_dir
    )
    total = sum(per_step.values())
    b, length = config.train.batch_size, config.train.window_steps
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); {name} {b}x{length}")
    print(
        f"traced {args.steps} steps: wall {wall * 1e3:.2f} ms/step, summed op time "
        f"{total / 1e6:.2f} ms/step ({source}); trace and HLO in {out_dir}"
    )
    by_kind: dict[str, float] = collections.defaultdict(float)
    for op, ns in per_step.items():
        by_kind[kinds.get(op, "?").split(" ")[0]] += ns
    print("| kind | ms/step | share |\n|---|---|---|")
    for kind, ns in sorted(by_kind.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| {kind} | {ns / 1e6:.3f} | {100 * ns / total:.1f}% |")
    by_scope: dict[str, float] = collections.defaultdict(float)
    for op, ns in per_step.items():
        by_scope[scopes.get(op, "?")] += ns
    print("| pass and layer | ms/step | share |\n|---|---|---|")
    for scope, ns in sorted(by_scope.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| {scope} | {ns / 1e6:.3f} | {100 * ns / total:.1f}% |")
    print("| op | kind and result shape | layer | ms/step | share |\n|---|---|---|---|---|")
    for op, ns in sorted(per_step.items(), key=lambda kv: -kv[1])[: args.top]:
        print(
            f"| {op} | {kinds.get(op, '?')} | {scopes.get(op, '?')} | {ns / 1e6:.3f} | "
            f"{100 * ns / total:.1f}% |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
