"""Stage-1 face-feature learning (Sec. 6.2, 6.4) on the embedded corpus: the improved AlexNet.

Run: python -m avemo.stage1 --config configs/stage1.py --workdir workdir/stage1

Per-frame regression of arousal and valence from the 64x64 gray face crops of `configs/default.py`
(only frames with a face), R^2 (Eq. 34) on the dev sessions. The AlexNet sizes are those of
`configs/default.py`, so the weights can initialise its video branch:

  python -m avemo.main --config configs/default.py --workdir workdir/default_stage1 \
      --config.model.video_init=workdir/stage1 [--config.model.freeze_video=True]
"""

from configs.default import get_config as default_config


def get_config(arg=None):  # noqa: ARG001
    c = default_config()
    c.stage1.backbone = "improved_alexnet"
    c.stage1.batch_size = 64
    c.stage1.num_steps = 600
    c.stage1.learning_rate = 2e-3
    c.stage1.schedule = "cosine"
    c.stage1.warmup_steps = 50
    c.stage1.frame_stride = 1
    c.stage1.eval_max_frames = 0  # all dev frames with a face
    c.stage1.eval_batch_size = 256
    c.stage1.log_every_steps = 50
    c.stage1.eval_every_steps = 200
    return c
