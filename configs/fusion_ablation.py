"""Fusion ablation rows (docs/fusion.md): the paper's model, each remedy added one at a time.

Run: python -m avemo.main --config configs/fusion_ablation.py:ROW --workdir W [--config.seed=S]
     python -m launch.sweep --config configs/fusion_ablation.py:ROW --workdir W \
         --executor population --data-order member          # the row over seeds 0, 1, 2
     (ROW/hard or --config.data.synthetic.voice_valence=0.35: the hard corpus variant)

ROW (cumulative, in this order):
  paper           the paper's model at the CPU default's size (no remedy; lambda 0.1)
  audio_dropout   + element-wise audio input dropout 0.5 (the previous default)
  relative_m      + speech energy m relative to the session level (18 dB)
  modality_drop   + modality dropout 0.3 (whole windows without face / voice)
  gate_mn         + gate sees m and n
  face_lstm       + temporal face stream (LSTM 32)
  heads           + per-modality heads (weight 0.5)
  lambda1         + lambda = 1 (the default until far-field augmentation; was named "default")
  far_field       + far-field augmentation 0.3 (the default until the face query)
  face_query      + the attention queried by the face stream (model.attention_query="face")
  head_weight     + the heads' loss weight 1.0 (was 0.5; the default until the face tower)
  face_tower      + an LSTM over the face context (model.face_context_lstm) and a face LSTM of
                  64 (was 32), 900 steps end to end (the default until the face stage)
  face_stage      + a video-only first stage of 900 steps whose face stream the fusion starts
                  from (train.face_stage_steps; a dense layer before the face LSTM, as the
                  video-only model has; the default until the speech-pooled functionals)
  speech_pool     + speech-pooled audio functionals (4 s, causal) and no audio input dropout
                  (was 0.5; the default until the label delay)
  label_delay     + the raters' delay at the source, 16 steps (data.label_delay_steps; the
                  default until the gate per dimension)
  gate_per_output + one gate per emotion dimension, each with its own Eq. (30), output LSTM and
                  head (model.gate_per_output; the default until the face weight)
  face_weight     + the post-processing's face weight, fitted on dev (postprocess.face_weight;
                  the default until the face tower's continued schedule)
  face_continued  + the face tower continues the face stage's learning-rate schedule, the
                  layers the stage did not train start their own
                  (train.stage_schedule="face_continued"; the default until the voice weight)
  voice_weight    + the post-processing's voice weight, fitted on dev: the output moved toward
                  the voice head where the voice is heard (postprocess.voice_weight): the default
                  (configs/default.py; alias "default")
  audio, video    single-modality models with the default's settings that apply to them (both:
                  the label delay; audio: with far-field augmentation and the speech-pooled
                  functionals, and its own
                  best input dropout, 0.5; video: no voice), trained for the default's whole
                  budget (face stage + fusion steps: 1800)
ROW+far_field adds far-field augmentation to any row (audio+far_field: audio only with it).
ROW/hard: the row on the hard corpus variant (data.synthetic.voice_valence = 0.35, the voice
carries little valence), e.g. configs/fusion_ablation.py:video/hard.
ROW|key=value,...: the row with scalar keys changed (the variants of docs/fusion.md), e.g.
configs/fusion_ablation.py:'face_query|loss.modality_head_weight=2.0' (quote the '|').
"""

from avemo import config as config_lib
from configs import default

HARD_VOICE_VALENCE = 0.35
# The audio-only model's element-wise input dropout, chosen on dev among 0.5 / 0.2 / 0.0 with the
# speech-pooled functionals (docs/fusion.md); the fusion's default has none.
AUDIO_ONLY_INPUT_DROPOUT = 0.5

ROWS = (
    "paper",
    "audio_dropout",
    "relative_m",
    "modality_drop",
    "gate_mn",
    "face_lstm",
    "heads",
    "lambda1",
    "far_field",
    "face_query",
    "head_weight",
    "face_tower",
    "face_stage",
    "speech_pool",
    "label_delay",
    "gate_per_output",
    "face_weight",
    "face_continued",
    "voice_weight",
)


def get_config(arg=None):
    arg, _, variant = (arg or "default").partition("|")
    arg, _, corpus = arg.partition("/")
    if corpus not in ("", "hard"):
        raise ValueError(f"unknown corpus variant {corpus!r}; only '/hard'")
    row, _, extra = arg.partition("+")
    row = ROWS[-1] if row == "default" else row
    c = _row(row)
    if extra:  # ROW+far_field: the row with far-field augmentation (e.g. audio+far_field)
        if extra != "far_field":
            raise ValueError(f"unknown addition {extra!r} to row {row!r}; only '+far_field'")
        c.train.far_field_augment = 0.3
    if corpus == "hard":
        c.data.synthetic.voice_valence = HARD_VOICE_VALENCE
    for key, value in _variant(variant).items():
        try:  # the config is locked: an unknown key or a wrong type raises
            c.update_from_flattened_dict({key: value})
        except (KeyError, AttributeError, TypeError) as err:
            raise ValueError(f"variant {key}={value!r}: unknown key or wrong type") from err
    return c


def _variant(text):
    """'key=value,...' -> {key: value}; a value is a Python literal, or else a string."""
    try:
        return config_lib.parse_assignments(filter(None, text.split(",")))
    except ValueError as err:
        raise ValueError(f"variant {err}") from None


def _row(row):
    c = default.get_config()
    if row in ("audio", "video"):
        # The same budget as the default: its face stage and its fusion steps together.
        c.train.num_steps = c.train.num_steps + c.train.face_stage_steps
        c.train.face_stage_steps = 0
        c.train.audio_stage_steps = 0
        c.train.face_init_lr_scale = 1.0
        c.train.stage_schedule = "restart"  # no face stage to continue
        c.model.face_lstm_dense_features = 0
        c.model.mode = row
        c.train.modality_dropout = 0.0  # one stream: nothing to drop
        c.model.modality_heads = False
        c.model.output_residual = False
        c.model.gate_per_output = False
        c.postprocess.face_weight = False  # no face head beside the output to weigh
        c.postprocess.voice_weight = False  # nor a voice head
        c.model.fusion_level = "features"
        c.model.gate_inputs = "states"
        c.model.video_lstm_features = 0
        c.model.face_context_lstm = False
        c.model.attention_query = "audio"  # video: the query is the video LSTM's own state
        if row == "video":
            c.train.far_field_augment = 0.0  # no voice to hear from afar
        else:  # its own best on dev (docs/fusion.md: 0.5 vs 0.2 vs 0.0 with the pooled columns)
            c.model.audio_input_dropout = AUDIO_ONLY_INPUT_DROPOUT
        return c
    if row not in ROWS:
        raise ValueError(f"unknown ablation row {row!r}; choose from {ROWS + ('audio', 'video')}")
    keep = ROWS.index(row)
    if keep < ROWS.index("voice_weight"):
        c.postprocess.voice_weight = False
    if keep < ROWS.index("face_continued"):
        c.train.stage_schedule = "restart"
    if keep < ROWS.index("face_weight"):
        c.postprocess.face_weight = False
    if keep < ROWS.index("gate_per_output"):
        c.model.gate_per_output = False
    if keep < ROWS.index("label_delay"):
        c.data.label_delay_steps = 0
    if keep < ROWS.index("speech_pool"):
        c.audio.features.speech_pooled_seconds = 0.0
        c.model.audio_input_dropout = 0.5
    if keep < ROWS.index("face_stage"):
        c.train.face_stage_steps = 0
        c.train.face_init_lr_scale = 1.0
        c.model.face_lstm_dense_features = 0
    if keep < ROWS.index("face_tower"):
        c.model.face_context_lstm = False
        c.model.video_lstm_features = 32
    if keep < ROWS.index("head_weight"):
        c.loss.modality_head_weight = 0.5
    if keep < ROWS.index("face_query"):
        c.model.attention_query = "audio"
    if keep < ROWS.index("far_field"):
        c.train.far_field_augment = 0.0
    if keep < ROWS.index("lambda1"):
        c.loss.aux_weight = 0.1
    if keep < ROWS.index("heads"):
        c.model.modality_heads = False
        c.model.output_residual = False
    if keep < ROWS.index("face_lstm"):
        c.model.video_lstm_features = 0
    if keep < ROWS.index("gate_mn"):
        c.model.gate_inputs = "states"
    if keep < ROWS.index("modality_drop"):
        c.train.modality_dropout = 0.0
    if keep < ROWS.index("relative_m"):
        c.audio.speech_energy.session_relative_db = 0.0
    if keep < ROWS.index("audio_dropout"):
        c.model.audio_input_dropout = 0.0
    return c


def get_sweep(arg=None):  # noqa: ARG001
    from launch import hyper

    return hyper.sweep("seed", [0, 1, 2])
