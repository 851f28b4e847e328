"""The backbone comparison of Fig. 4/5 (Sec. 6.4) on the embedded corpus, one backbone per run.

Run (one workdir per backbone; `arg` picks it, default improved_alexnet):
  for b in improved_alexnet alexnet vgg inception; do
    python -m avemo.stage1 --config configs/stage1_compare.py:$b --workdir workdir/stage1_compare/$b
  done

Same data, steps, optimizer and fully connected head as `configs/stage1.py`; only the
convolutional part differs (`avemo.models.backbones`). Widths are chosen so that the four nets
cost a similar order of compute on a 2-core CPU, not to match the paper's parameter counts.
"""

from configs.stage1 import get_config as stage1_config

BACKBONES = ("improved_alexnet", "alexnet", "vgg", "inception")


def get_config(arg=None):
    c = stage1_config()
    c.stage1.backbone = arg or "improved_alexnet"
    c.stage1.alexnet.conv_features = (16, 24, 32, 32, 32)
    c.stage1.alexnet.kernel_sizes = (7, 5, 3, 3, 3)
    c.stage1.alexnet.conv_strides = (2, 1, 1, 1, 1)
    c.stage1.vgg.block_features = (8, 16, 32)
    c.stage1.vgg.convs_per_block = 2
    c.stage1.inception.stem_features = 8
    c.stage1.inception.module_features = ((8, 8, 16, 4, 8, 8), (16, 16, 16, 4, 8, 8))
    c.stage1.inception.pool_after = (0, 1)
    return c
