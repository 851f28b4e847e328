"""Test population sweep: configs/tiny.py, two members that differ in seed, lambda and lr.

Run: python -m launch.sweep --config tests/launch/population_tiny.py --workdir W \
    --executor population
Arg "long": 300 steps (the SIGTERM test stops it early); "shapes": two widths (two groups).
"""

from configs import tiny
from launch import hyper


def get_config(arg=None):
    c = tiny.get_config()
    c.checkpoint.async_save = False
    if arg == "long":
        c.train.num_steps = 300
        c.train.log_every_steps = 1
        c.train.eval_every_steps = 100000
        c.train.checkpoint_every_steps = 100000
    return c


def get_sweep(arg=None):
    points = hyper.zipit(
        hyper.sweep("seed", [0, 1]),
        hyper.sweep("loss.aux_weight", [0.0, 1.0]),
        hyper.sweep("train.learning_rate", [5e-4, 1e-3]),
    )
    if arg == "shapes":
        return hyper.product(hyper.sweep("model.lstm_features", [8, 16]), points)
    return points
