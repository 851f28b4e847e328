"""The auxiliary-loss ablation (Sec. 5.2, Eq. 31): lambda in {0, 0.1, 0.3, 1} x 3 seeds.

Run (all 12 points, 2 at a time on a 2-core machine; re-running skips finished points):
  python -m launch.sweep --config configs/ablation_aux.py --workdir workdir/ablation_aux \
      --executor local --workers 1
  python -m launch.collect workdir/ablation_aux \
      --metrics dev/ccc_pooled/arousal,dev/ccc_pooled/valence

The frozen-face recipe (Sec. 6.4: stage-1 face CNN, then the fusion with the CNN fixed), as a
population whose members share one CNN forward per step:
  python -m launch.sweep --config configs/ablation_aux.py:frozen=workdir/stage1 \
      --workdir workdir/ablation_aux_frozen --executor population

Each point is the default fusion experiment on the embedded corpus with a shorter budget; its
evaluation report (reports/ in the point's workdir) adds the missing-modality protocol and the
correlation between the gate beta and the modality availability (m - n).
"""

from configs import fusion_ablation
from launch import hyper


def get_config(arg=None):
    # The committed table (docs/ablation_aux.md) was produced before the default config gained
    # audio input dropout and the fusion remedies (docs/fusion.md); the ablation keeps the
    # paper's model without them.
    c = fusion_ablation.get_config("paper")
    c.train.num_steps = 300
    c.train.eval_every_steps = 100
    c.train.checkpoint_every_steps = 100
    if arg and arg.startswith("frozen="):  # stage-1 weights (avemo.stage1 workdir), kept fixed
        c.model.video_init = arg.removeprefix("frozen=")
        c.model.freeze_video = True
    return c


def get_sweep(arg=None):  # noqa: ARG001
    return hyper.product(
        hyper.sweep("loss.aux_weight", [0.0, 0.1, 0.3, 1.0]),
        hyper.sweep("seed", [0, 1, 2]),
    )
