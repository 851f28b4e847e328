"""The paper's settings (Sec. 4.2, 5, 6.2): 224x224 faces, Adam, lr 5e-4, 1000 epochs, audio CNN.

Run (GPU/TPU; far too slow for a CPU):
  python -m avemo.main --config configs/paper.py --workdir workdir/paper \
      --config.data.corpus=avec2016 --config.data.root=/path/to/AVEC2016

Where the paper is silent we choose, and say so here:
  * batch 150 (Sec. 6.2) is a batch of 150 face images; the bimodal stage keeps 150 face frames
    per batch as 6 windows x 25 steps (1 s of context per window, 40 ms steps);
  * the AlexNet widths follow the classic AlexNet (96, 256, 384) with a stride-2 first conv, so
    224 x 224 faces become the 14 x 14 = 196 attention positions of Sec. 5.1; FC widths 4096 as
    in the paper's example of Sec. 4.2.4 (FC-as-conv has the same parameter count as the FC);
  * LSTM width 128 and attention width 128 (not given).
"""

from avemo.config import base_config


def get_config(arg=None):  # noqa: ARG001
    c = base_config()
    c.data.corpus = "synthetic"
    c.video.crop_size = 224
    c.video.color_mode = "rgb"
    c.model.mode = "fusion"
    c.model.alexnet.conv_features = (96, 256, 384)
    c.model.alexnet.conv_strides = (2, 1, 1)
    c.model.alexnet.fc_features = (4096, 4096)
    c.model.alexnet.fc_impl = "conv"  # the paper's literal form; "dense" is equivalent, faster
    c.model.video_frame_stride = 1
    # The RGB first layer of the face CNN and the one-channel first layer of the audio CNN as
    # patches + one matmul (same parameters and sums): on an H200, bf16, 48x25, the step went
    # from 62.0 to 56.7 ms (docs/performance.md); 4 or 16 channels were slower.
    c.model.patch_conv_channels = 3
    c.model.audio_cnn.enabled = True  # 2x2x4, 3x3x16, 3x3x32 over 120 x 120 log-mel patches
    c.model.audio_dense_features = 128
    c.model.lstm_features = 128
    c.model.attention_features = 128
    c.model.output_lstm_features = 128
    c.loss.main = "rmse"  # Eq. (37)
    c.loss.aux_weight = 0.1
    c.train.optimizer = "adam"
    c.train.learning_rate = 5e-4
    c.train.schedule = "constant"
    c.train.batch_size = 6
    c.train.window_steps = 25
    c.train.window_hop_steps = 25
    c.train.num_steps = 0
    c.train.num_epochs = 1000
    c.train.log_every_steps = 100
    c.train.eval_every_steps = 1000
    c.train.checkpoint_every_steps = 1000
    c.eval.batch_size = 6
    return c
