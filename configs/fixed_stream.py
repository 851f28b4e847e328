"""The two-stage recipe with the whole face stream kept fixed (issue 10; docs/performance.md).

Run: python -m avemo.main --config configs/fixed_stream.py --workdir workdir/fixed_stream

The default's model and data (configs/default.py). Stage 1 is the default's face stage: the
video-only model, 900 steps on its own schedule, whose face CNN, LSTM, attention, output LSTM and
head are, layer for layer, the fusion's face stream (avemo/warm_start.py). Stage 2 trains the
fusion with that stream kept fixed (`model.freeze_face_stream`): queried by the face's own state
it is a function of the face alone, so its states are computed once per training window and the
pipeline carries them instead of faces; a fusion step costs the voice's LSTM, the gates and the
two output LSTMs, 10.5-12.0x less than the default's end-to-end step on a 2-core CPU. Test CCC
(seeds 0-2, the post-processing of the fifteenth stop) 0.946 +- 0.006 / 0.966 +- 0.003 against
the default's 0.951 +- 0.004 / 0.966 +- 0.004; the whole run ~3 min against the default's ~3.6
(docs/performance.md).
"""

from configs import default


def get_config(arg=None):
    c = default.get_config(arg)
    c.model.freeze_face_stream = True
    return c
