"""Test sweep: configs/tiny.py for two steps, over two values of the aux-loss weight.

Run: python -m launch.sweep --config tests/launch/sweep_tiny.py --workdir workdir/sweep_tiny
"""

from configs import tiny
from launch import hyper


def get_config(arg=None):  # noqa: ARG001
    c = tiny.get_config()
    c.train.num_steps = 2
    c.train.eval_every_steps = 2
    c.train.checkpoint_every_steps = 2
    c.checkpoint.async_save = False
    return c


def get_sweep(arg=None):
    if arg == "bad":  # a misspelt key in the second point
        return [{"loss.aux_weight": 0.0}, {"loss.aux_wieght": 0.3}]
    if arg == "grid":
        return hyper.product(
            hyper.zipit(
                hyper.sweep("loss.aux_weight", [0.0, 1.0]),
                hyper.sweep("model.gate", ["learned", "fixed"]),
            ),
            hyper.sweep("seed", range(3)),
        )
    return hyper.sweep("loss.aux_weight", [0.0, 0.3])
