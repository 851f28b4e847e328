"""Step time and memory of population training against the number of members K.

    python -m launch.population_bench --config configs/ablation_aux.py --members 1,2,4,8,12 \
        [--member-conv loop,vmap] [--steps 5] [--data-order shared|member]

Each (K, conv) runs in its own subprocess (a clean peak-RSS figure): it builds the population of
K copies of the config (seeds 0..K-1; lambda and learning rate as in the config), compiles the
step on one real training batch, then times `--steps` steps. Printed per row: the compile time,
the median step time, the step time per member, the ratio to K separate steps (K x the K=1 step of
the same run; < 1 means the population is cheaper) and the process's peak RSS. Ratios are only
meaningful within one invocation (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(config_spec: str, k: int, member_conv: str, steps: int, data_order: str) -> dict:
    """One (K, conv) measurement in this process."""
    import jax
    import numpy as np

    from avemo import population, train
    from avemo.data import augment, pipeline
    from launch import sweep

    base = sweep.build_config(config_spec, {})
    configs = [sweep.build_config(config_spec, {"seed": i}) for i in range(k)]
    sessions = train.load_sessions(base, os.path.join("/tmp", "avemo_population_bench"))
    total = train.num_train_steps(base, pipeline.num_train_windows(sessions, base))
    trainer = population.PopulationTrainer(
        configs,
        train.example_batch(sessions, base, 1),
        total,
        data_order=data_order,
        member_conv=member_conv,
    )
    sessions = population.attach_frozen_features(trainer, sessions)  # frozen: cached maps
    state = trainer.init_state()
    iters = [
        iter(
            pipeline.train_dataset(  # silent window of zeros (the training mean): timing only
                sessions,
                c,
                silence=augment.silent_window(
                    c, None, int(sessions[0].arrays["audio_features"].shape[-1])
                ),
            )
        )
        for c in configs[: (k if data_order == "member" else 1)]
    ]
    local = [next(it) for it in iters]
    if data_order == "member":
        local = [{key: np.stack([b[key] for b in local]) for key in local[0]}]
    batch = trainer.to_global(local[0])
    t0 = time.perf_counter()
    state, m = trainer.train_step(state, batch, trainer.base_rngs, trainer.hparam_arrays)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = trainer.train_step(state, batch, trainer.base_rngs, trainer.hparam_arrays)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return {
        "K": k,
        "member_conv": trainer.member_conv,
        "shared_face": trainer.shared_face or "faces" not in sessions[0].arrays,
        "compile_s": compile_s,
        "step_s": float(np.median(times)),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.population_bench", description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--members", default="1,2,4,8,12")
    parser.add_argument("--member-conv", default="loop,vmap")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--data-order", default="shared", choices=("shared", "member"))
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        from absl import flags

        flags.FLAGS(sys.argv[:1])
        row = measure(args.config, int(args.members), args.member_conv, args.steps, args.data_order)
        print(json.dumps(row), flush=True)
        return 0
    rows = []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    print("| conv | K | compile s | step s | step s / member | vs K separate | peak RSS GB |")
    print("|---|---|---|---|---|---|---|")
    for conv in args.member_conv.split(","):
        single = None
        for k in (int(x) for x in args.members.split(",")):
            cmd = [sys.executable, "-m", "launch.population_bench", "--one", "--config",
                   args.config, "--members", str(k), "--member-conv", conv, "--steps",
                   str(args.steps), "--data-order", args.data_order]  # fmt: skip
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                tail = (out.stderr.strip().splitlines() or ["?"])[-1]
                print(f"| {conv} | {k} | failed (exit {out.returncode}: {tail}) |||||", flush=True)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            if k == 1:
                single = row["step_s"]
            ratio = f"{row['step_s'] / (k * single):.2f}" if single else "-"
            print(
                f"| {row['member_conv']}{' (shared face)' if row['shared_face'] else ''} | {k} "
                f"| {row['compile_s']:.1f} | {row['step_s']:.3f} | {row['step_s'] / k:.3f} "
                f"| {ratio} | {row['peak_rss_gb']:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
