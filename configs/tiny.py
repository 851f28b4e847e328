"""Tiny config for tests and smoke runs: the in-memory corpus, a few steps, seconds on a CPU.

Run: python -m avemo.main --config configs/tiny.py --workdir workdir/tiny
"""

from avemo.config import base_config


def get_config(arg=None):  # noqa: ARG001
    c = base_config()
    c.data.corpus = "memory"
    c.data.memory.train_sessions = 3
    c.data.memory.dev_sessions = 1
    c.data.memory.steps = 120
    c.data.memory.face_size = 16
    c.model.alexnet.conv_features = (4, 8, 8)
    c.model.alexnet.fc_features = (16, 16)
    c.model.audio_dense_features = 16
    c.model.lstm_features = 16
    c.model.attention_features = 16
    c.model.output_lstm_features = 16
    c.train.batch_size = 8
    c.train.window_steps = 20
    c.train.window_hop_steps = 10
    c.train.num_steps = 6
    c.train.log_every_steps = 2
    c.train.eval_every_steps = 3
    c.train.checkpoint_every_steps = 3
    c.eval.window_steps = 40
    c.eval.context_steps = 10
    c.eval.batch_size = 8
    c.eval.report_at_end = False  # reports (avemo.evaluate) are tested on their own
    return c
