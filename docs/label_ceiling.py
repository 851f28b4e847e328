"""The embedded corpus's label ceiling (docs/fusion.md): how well a perfect model could do.

    python docs/label_ceiling.py [--sessions 200]

Simulates sessions with the generator's own latent trajectories and raters
(`avemo.data.corpora.synthetic`) and scores three predictors of the gold standard: the latent
itself (ahead of the raters by their 1-3 s delay), the latent through one fixed filter (2-s delay
and the raters' 0.5-s joystick lag -- what a perfect model plus the post-processing's delay could
give), and the raters' noise-free mean (knows each rater's delay, gain and bias).
"""

import argparse

import numpy as np
from scipy import signal

from avemo.data.corpora.synthetic import STEP_SECONDS, ccc, latent_trajectory, smooth_noise


def lag(latent: np.ndarray, delay_s: float) -> np.ndarray:
    """A rater's delay and joystick lag, as `synthetic.rate` applies them."""
    steps = np.arange(latent.size)
    delayed = np.interp(steps - delay_s / STEP_SECONDS, steps, latent)
    return signal.lfilter([0.08], [1.0, -0.92], delayed - delayed[0]) + delayed[0]


def rate(rng: np.random.Generator, latent: np.ndarray, num_raters: int = 6):
    """`synthetic.rate`'s gold standard, and the same raters without their noise."""
    ratings, clean = [], []
    for _ in range(num_raters):
        lagged = lag(latent, rng.uniform(1.0, 3.0))
        noise = 0.15 * smooth_noise(rng, latent.size, 0.6 / STEP_SECONDS)
        noise += 0.03 * rng.standard_normal(latent.size)
        gain, bias = rng.uniform(0.75, 1.15), rng.normal(0, 0.05)
        ratings.append(np.clip(gain * lagged + bias + noise, -1.0, 1.0))
        clean.append(gain * lagged + bias)
    return np.mean(ratings, 0), np.mean(clean, 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=200)
    args = parser.parse_args()
    for seconds in (60, 120):
        scores = {"latent": [], "latent, 2-s delay + lag": [], "raters' noise-free mean": []}
        for k in range(args.sessions):
            rng = np.random.default_rng(1000 + k)
            latent = latent_trajectory(rng, int(seconds / STEP_SECONDS))
            gold, clean = rate(rng, latent)
            scores["latent"].append(ccc(latent, gold))
            scores["latent, 2-s delay + lag"].append(ccc(lag(latent, 2.0), gold))
            scores["raters' noise-free mean"].append(ccc(clean, gold))
        for name, values in scores.items():
            mean, std = np.mean(values), np.std(values, ddof=1)
            print(f"{seconds:>4} s  {name:<26} CCC {mean:.3f} ± {std:.3f}")


if __name__ == "__main__":
    main()
