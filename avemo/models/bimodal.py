"""The composed bimodal model of Fig. 1: face stream + audio stream -> attention fusion -> (A, V).

  faces [B,L,H,W,C] -> improved AlexNet per frame -> feature map F_t [B,L,k,C]
  audio features [B,L,D] (+ audio CNN over log-mel patches) -> Dense -> LSTM -> h_t (Eq. 27)
  F_t, h_t -> attention (Eq. 28-29) -> c_t ; gate beta_t ; fused = beta h + (1-beta) c (Eq. 30)
  fused -> optional output LSTM -> dense head -> arousal, valence per step.

Fusion remedies (issue 9, docs/fusion.md), each off in the paper's model:
  video_lstm_features > 0: a temporal face stream, an LSTM over the pooled face features whose
    state (projected) is added to c_t, so the face path has its own memory instead of per-frame
    context under an audio query;
  gate_inputs "states+availability": beta_t also sees m_t and n_t (Eq. 31's targets);
  face_context_lstm: an LSTM over c_t (after the face memory), so the face vector the gate, the
    fusion and the face head see is, as in the video-only model, read through two recurrent
    layers;
  detach_face_stream: c_t enters the gate and the fusion under stop_gradient, so only the face
    head's loss trains the face stream (as the video-only model is trained);
  modality_heads: per-modality regression heads on h_t and on the face vector, trained by
    `loss.modality_head_weight`, so each stream must carry the labels on its own;
  fusion_combine "concat": [beta h; (1-beta) c] instead of Eq. (30)'s sum, the gated streams
    side by side for the layers after the gate;
  output_residual: outputs = head(fused) + the face head's outputs, the head starting at zero,
    so the fusion corrects the face stream's prediction instead of relearning it.
  gate_per_output: one gate per output dimension (beta_t^A, beta_t^V), each with its own Eq. (30)
    fusion, output LSTM and head, so arousal can be read mostly from the voice while valence is
    read from the face; Eq. (31) constrains their mean (`audio_gate`; `audio_gates` holds both).
  fusion_level "outputs": Eq. (30) applied to the per-modality heads' predictions,
    outputs = beta * audio_head(h) + (1 - beta) * face_head(c) (per dimension with
    gate_per_output), so beta selects between the streams' readings of the labels instead of
    scaling states that the layers after it can re-amplify; no output LSTM or main head.
    With gate_per_output a level per dimension ("features/outputs": arousal fused at the
    states and read by its output LSTM and head, valence fused at the heads' outputs).

Modes for ablations: "fusion" (the paper's model), "audio" (h_t only) and "video" (the attention
query comes from an LSTM over the pooled face features; the fused vector is c_t).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from avemo.config import fusion_levels
from avemo.models.alexnet import ImprovedAlexNet
from avemo.models.attention import AudioGate, SpatialAttention, fuse
from avemo.models.audio_cnn import AudioCNN
from avemo.models.dropout import Dropout, is_active
from avemo.models.recurrent import SequenceLSTM

# The modules of the face stream (warm_start.FACE_STREAM_MAP's fusion side and the face memory)
# that `model.freeze_face_stream` keeps fixed.
FROZEN_FACE_STREAM = (
    "alexnet",
    "face_lstm",
    "attention",
    "face_memory",
    "face_context_lstm",
    "video_head",
)
# A frozen face stream's outputs, as the model emits them and a batch may carry them: the face
# vector c_t [B, L, lstm_features] and the face head's (A, V) [B, L, num_outputs].
FACE_STREAM_KEYS = ("face_stream", "face_stream_outputs")


def _face_steps(batch: Mapping[str, jax.Array]) -> int:
    """L, the steps of a batch (`faces` and cached `face_features` may hold only every s-th
    step's: training windows, `pipeline._cut`)."""
    for key in ("face_present", "mask", "audio_features", "labels", "faces"):
        if key in batch:
            return batch[key].shape[1]
    return batch["face_features"].shape[1]


class BimodalModel(nn.Module):
    """Per-step arousal/valence from a batch of windows (see docs/contracts.md for the keys)."""

    mode: str = "fusion"
    conv_features: Sequence[int] = (16, 32, 64)
    conv_strides: Sequence[int] = (1, 1, 1)
    fc_features: Sequence[int] = (256, 256)
    alexnet_dropout: float = 0.3
    fc_impl: str = "dense"
    video_frame_stride: int = 1
    use_audio_cnn: bool = False
    audio_cnn_features: Sequence[int] = (4, 16, 32)
    audio_cnn_kernel_sizes: Sequence[Sequence[int]] = ((2, 2), (3, 3), (3, 3))
    audio_cnn_pool_size: int = 3
    audio_cnn_output_features: int = 64
    audio_dense_features: int = 64
    audio_input_dropout: float = 0.0
    lstm_features: int = 64
    attention_features: int = 64
    gate: str = "learned"
    fixed_gate_value: float = 0.5
    gate_inputs: str = "states"
    fusion_combine: str = "sum"
    video_lstm_features: int = 0
    face_lstm_dense_features: int = 0
    attention_query: str = "audio"
    modality_heads: bool = False
    face_context_lstm: bool = False
    detach_face_stream: bool = False
    output_residual: bool = False
    gate_per_output: bool = False
    fusion_level: str = "features"
    output_lstm_features: int = 64
    head_dropout: float = 0.1
    num_outputs: int = 2
    dtype: jnp.dtype = jnp.float32
    pool_impl: str = "fast"
    patch_channels: int = 0  # model.patch_conv_channels
    phase_channels: int = 0  # model.phase_conv_channels
    lstm_impl: str = "native"  # see avemo.models.recurrent (equal outputs and gradients)
    attention_impl: str = "native"  # see avemo.models.attention.SpatialAttention (the same)
    conv_pool_impl: str = "native"  # model.conv_pool_impl (avemo.models.layers.conv_pool)
    # A frozen face branch (stage-1 weights kept fixed, Sec. 6.4) runs in inference mode (BN
    # running statistics, no dropout) under stop_gradient, in training as in evaluation.
    freeze_video: bool = False
    # The whole face stream kept fixed (`model.freeze_face_stream`, FROZEN_FACE_STREAM): it runs
    # as a frozen branch does, and a batch may carry its states (FACE_STREAM_KEYS, computed once
    # per training window: `avemo.data.frozen.stream_windows`) instead of the face inputs.
    freeze_face_stream: bool = False

    def _face_maps(self, batch: Mapping[str, jax.Array], train: bool) -> tuple[jax.Array, int]:
        """(maps [B, ceil(L/s), k, C] of every s-th step, s): the CNN over the face crops
        (`faces`), or the precomputed maps of a frozen branch (`face_features`, see
        `avemo.data.frozen`: [B, L, k, C] of every step, or [B, ceil(L/s), k, C] of every s-th
        step as the pipeline cuts them).

        With `video_frame_stride` s > 1 the CNN sees every s-th step and each map is held for
        s steps (a face changes slowly next to the 40 ms grid; the CNN's cost drops by s).
        """
        stride = self.video_frame_stride
        if "face_features" in batch:  # cached maps of the frozen CNN
            maps = batch["face_features"]
            if maps.shape[1] == _face_steps(batch):  # of every step (else already every s-th)
                maps = maps[:, ::stride]
            return maps.astype(self.dtype), stride
        faces = batch["faces"]
        if faces.shape[1] == _face_steps(batch):  # of every step (else already every s-th)
            faces = faces[:, ::stride]
        b, length = faces.shape[:2]
        net = ImprovedAlexNet(
            conv_features=self.conv_features,
            conv_strides=self.conv_strides,
            fc_features=self.fc_features,
            num_outputs=self.num_outputs,
            dropout=self.alexnet_dropout,
            fc_impl=self.fc_impl,
            dtype=self.dtype,
            pool_impl=self.pool_impl,
            patch_channels=self.patch_channels,
            phase_channels=self.phase_channels,
            conv_pool_impl=self.conv_pool_impl,
            name="alexnet",
        )
        # The conv feature map feeds the attention (Eq. 28); the AlexNet's FC layers and output
        # serve stage-1 feature learning (Sec. 6.4) and keep their parameters for it.
        frozen = self.freeze_video or self.freeze_face_stream
        # The FC layers run only at initialisation, which creates their parameters (stage-1
        # checkpoints load into them); nothing of the bimodal model reads them, so a train or
        # eval step neither computes them nor counts their FLOPs (their updates are zero:
        # `avemo.train.make_optimizer`).
        out = net(
            faces.reshape((b * length,) + faces.shape[2:]),
            train=train and not frozen,
            head=self.is_initializing(),
        )
        fmap = out["feature_map"]
        if frozen:
            fmap = jax.lax.stop_gradient(fmap)
        return fmap.reshape(b, length, fmap.shape[1] * fmap.shape[2], fmap.shape[3]), stride

    def _audio_stream(self, batch: Mapping[str, jax.Array], train: bool) -> jax.Array:
        x = batch["audio_features"].astype(self.dtype)
        if is_active(self.audio_input_dropout):  # a number, or a per-member array (population)
            # Element-wise dropout on the feature vector: keeps the fast-learning audio stream
            # from carrying everything (the face stream then has to contribute).
            x = Dropout(self.audio_input_dropout, deterministic=not train)(x)
        if self.use_audio_cnn:
            spec = batch["spectrogram"]
            b, length = spec.shape[:2]
            cnn = AudioCNN(
                self.audio_cnn_features,
                self.audio_cnn_kernel_sizes,
                self.audio_cnn_pool_size,
                self.audio_cnn_output_features,
                dtype=self.dtype,
                pool_impl=self.pool_impl,
                patch_channels=self.patch_channels,
                name="audio_cnn",
            )
            emb = cnn(spec.reshape((b * length,) + spec.shape[2:]))
            x = jnp.concatenate([x, emb.reshape(b, length, -1).astype(self.dtype)], axis=-1)
        return self._lstm(self.lstm_features, "audio_lstm", self.audio_dense_features)(x)

    def _lstm(self, features: int, name: str, dense_features: int = 0) -> SequenceLSTM:
        """A recurrent layer of this model (its dtype and `lstm_impl`)."""
        return SequenceLSTM(
            features, dense_features, dtype=self.dtype, impl=self.lstm_impl, name=name
        )

    def _face_state(self, pooled: jax.Array) -> jax.Array:
        """Temporal face stream v_t: an LSTM over the pooled face map (`video_lstm_features`)."""
        return self._lstm(self.video_lstm_features, "face_lstm", self.face_lstm_dense_features)(
            pooled
        )

    def _attention_query(self, h: jax.Array, face_state: jax.Array | None) -> jax.Array:
        """The state the attention of Eq. (28) is conditioned on (`attention_query`).

        "audio": h_t, as the paper writes it (W_g h_t). The context of the face then depends on
        the voice: a silenced voice changes the query, and with it which face regions are pooled
        (a face-only head on c_t fell from 0.80 / 0.73 to 0.06 / 0.16 CCC on dev with the voice
        silenced, docs/fusion.md). "face": the face stream's own state v_t, so c_t is a function
        of the face alone (as in the video-only model, whose query is its video LSTM).
        "audio+face": [h_t; v_t].
        """
        if self.attention_query == "audio":
            return h
        if face_state is None:
            raise ValueError(f"attention_query={self.attention_query!r} needs video_lstm_features")
        if self.attention_query == "face":
            return face_state
        return jnp.concatenate([h, face_state], axis=-1)

    def _stream_head(self, x: jax.Array, name: str) -> jax.Array:
        """A per-modality (A, V) head (modality_heads)."""
        return nn.Dense(self.num_outputs, dtype=self.dtype, name=name)(x).astype(jnp.float32)

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array], train: bool = False) -> dict[str, jax.Array]:
        out: dict[str, jax.Array] = {}
        if self.mode in ("fusion", "audio"):
            h = self._audio_stream(batch, train)
        # A frozen face stream's states given with the batch (training windows): nothing of the
        # face stream runs (its parameters exist from initialisation and stay as they are).
        cached = self.freeze_face_stream and FACE_STREAM_KEYS[0] in batch
        if cached:
            context = batch[FACE_STREAM_KEYS[0]].astype(self.dtype)
            if self.modality_heads:
                out["video_outputs"] = batch[FACE_STREAM_KEYS[1]].astype(jnp.float32)
        if self.mode in ("fusion", "video") and not cached:
            maps, stride = (  # maps computed outside (population training: per member) or here
                (batch["face_feature_map"], self.video_frame_stride)
                if "face_feature_map" in batch
                else self._face_maps(batch, train)
            )
            # The held maps' spatial mean, [B, L, C]: the mean of each CNN frame, repeated (the
            # same values as the mean of the repeated maps, without materialising those).
            pooled = jnp.repeat(maps.mean(axis=2), stride, axis=1)[:, : _face_steps(batch)]
            if self.mode == "video":
                h = self._lstm(self.lstm_features, "video_lstm", self.audio_dense_features)(pooled)
            face_state = None
            if self.mode == "fusion" and self.video_lstm_features:
                face_state = self._face_state(pooled)
            query = h if self.mode == "video" else self._attention_query(h, face_state)
            context, weights = SpatialAttention(
                self.attention_features,
                self.lstm_features,
                dtype=self.dtype,
                impl=self.attention_impl,
                name="attention",
            )(maps, query, stride)
            out["attention"] = weights
            if face_state is not None:  # the face stream's state, projected, joins c_t
                context = context + nn.Dense(
                    self.lstm_features, dtype=self.dtype, name="face_memory"
                )(face_state)
            if self.mode == "fusion" and self.face_context_lstm:
                context = self._lstm(self.lstm_features, "face_context_lstm")(context)
            if self.mode == "fusion" and self.freeze_face_stream:  # fixed: no gradient into
                # it; its states (and its face head's outputs) are outputs too
                if self.modality_heads:
                    face_outputs = self._stream_head(context, "video_head")
                    out["video_outputs"] = jax.lax.stop_gradient(face_outputs)
                    out[FACE_STREAM_KEYS[1]] = out["video_outputs"]
                context = jax.lax.stop_gradient(context)
                out[FACE_STREAM_KEYS[0]] = context
        if self.mode == "fusion":
            availability = None
            if self.gate_inputs == "states+availability":
                availability = jnp.stack([batch["speech_energy"], batch["face_present"]], -1)
            face = context  # the face vector c_t; detached: only the face head trains it
            if self.detach_face_stream:
                face = jax.lax.stop_gradient(context)
            beta = AudioGate(
                self.gate,
                self.fixed_gate_value,
                dtype=self.dtype,
                outputs=self.num_outputs if self.gate_per_output else 1,
                name="gate",
            )(h, face, availability)
            if self.gate_per_output:  # one Eq. (30) per output dimension
                fused = [
                    fuse(h, face, beta[..., d], self.fusion_combine) for d in range(beta.shape[-1])
                ]
                # Eq. (31) and the reports see the mean gate: the streams' overall balance
                out["audio_gate"] = beta.mean(axis=-1)
                out["audio_gates"] = beta
            else:
                fused = fuse(h, face, beta, self.fusion_combine)
                out["audio_gate"] = beta
            if self.modality_heads:
                out["audio_outputs"] = self._stream_head(h, "audio_head")
                if "video_outputs" not in out:  # (a fixed stream's: above, or with the batch)
                    out["video_outputs"] = self._stream_head(context, "video_head")
            levels = fusion_levels(self.fusion_level, self.num_outputs)
            if len(set(levels)) > 1 and not self.gate_per_output:
                raise ValueError(f"fusion_level {self.fusion_level!r} needs gate_per_output")
            by_outputs = None
            if "outputs" in levels:  # Eq. (30) on the heads' (A, V), not the states
                weight = beta if self.gate_per_output else beta[..., None]
                by_outputs = weight * out["audio_outputs"] + (1.0 - weight) * out["video_outputs"]
                if set(levels) == {"outputs"}:
                    out["outputs"] = by_outputs
                    return out
        elif self.mode == "audio":
            fused = h
        else:
            fused = context
        residual = self.output_residual and "video_outputs" in out
        # a correction of the face head's outputs starts at none
        kernel_init = nn.initializers.zeros if residual else nn.linear.default_kernel_init

        def read_out(x: jax.Array, outputs: int, suffix: str = "") -> jax.Array:
            if self.output_lstm_features:
                x = self._lstm(self.output_lstm_features, "output_lstm" + suffix)(x)
            x = Dropout(self.head_dropout, deterministic=not train)(x)
            head = nn.Dense(
                outputs, dtype=self.dtype, kernel_init=kernel_init, name="head" + suffix
            )
            return head(x).astype(jnp.float32)

        if self.mode == "fusion" and self.gate_per_output:  # each dimension its LSTM and head
            columns = [  # a dimension fused at the heads' outputs has no LSTM or head here
                by_outputs[..., d : d + 1] if levels[d] == "outputs" else read_out(x, 1, f"_{d}")
                for d, x in enumerate(fused)
            ]
            out["outputs"] = jnp.concatenate(columns, axis=-1)
        else:
            out["outputs"] = read_out(fused, self.num_outputs)
        if residual:
            out["outputs"] = out["outputs"] + out["video_outputs"]
        return out


def build_model(model_cfg: ml_collections.ConfigDict, mesh_devices: int = 1) -> BimodalModel:
    """Builds the model from `config.model` (see `avemo.config.model_defaults`).

    `mesh_devices` > 1 (a sharded train step): the native kernels give way (`lstm_impl` "native"
    becomes "fused", `attention_impl` "xla"). They are custom calls that XLA's partitioner cannot
    split, so on a mesh every device would gather the whole batch and run them on all of it
    (correct, but redundant); XLA's own ops partition with the batch. (The dropout masks' bits
    stay native, `avemo.models.dropout`: replicated, they cost a pass over the mask's shape.)"""
    lstm_impl, attention_impl = model_cfg.lstm_impl, model_cfg.attention_impl
    conv_pool_impl = model_cfg.conv_pool_impl
    if mesh_devices > 1:
        lstm_impl = "fused" if lstm_impl == "native" else lstm_impl
        attention_impl = conv_pool_impl = "xla"
    return BimodalModel(
        mode=model_cfg.mode,
        conv_features=tuple(model_cfg.alexnet.conv_features),
        conv_strides=tuple(model_cfg.alexnet.conv_strides),
        fc_features=tuple(model_cfg.alexnet.fc_features),
        alexnet_dropout=model_cfg.alexnet.dropout,
        fc_impl=model_cfg.alexnet.fc_impl,
        video_frame_stride=model_cfg.video_frame_stride,
        use_audio_cnn=model_cfg.audio_cnn.enabled,
        audio_cnn_features=tuple(model_cfg.audio_cnn.features),
        audio_cnn_kernel_sizes=tuple(tuple(k) for k in model_cfg.audio_cnn.kernel_sizes),
        audio_cnn_pool_size=model_cfg.audio_cnn.pool_size,
        audio_cnn_output_features=model_cfg.audio_cnn.output_features,
        audio_dense_features=model_cfg.audio_dense_features,
        audio_input_dropout=model_cfg.audio_input_dropout,
        lstm_features=model_cfg.lstm_features,
        attention_features=model_cfg.attention_features,
        gate=model_cfg.gate,
        fixed_gate_value=model_cfg.fixed_gate_value,
        gate_inputs=model_cfg.gate_inputs,
        fusion_combine=model_cfg.fusion_combine,
        video_lstm_features=model_cfg.video_lstm_features,
        face_lstm_dense_features=model_cfg.face_lstm_dense_features,
        attention_query=model_cfg.attention_query,
        modality_heads=model_cfg.modality_heads,
        face_context_lstm=model_cfg.face_context_lstm,
        detach_face_stream=model_cfg.detach_face_stream,
        output_residual=model_cfg.output_residual,
        gate_per_output=model_cfg.gate_per_output,
        fusion_level=model_cfg.fusion_level,
        output_lstm_features=model_cfg.output_lstm_features,
        head_dropout=model_cfg.head_dropout,
        num_outputs=model_cfg.num_outputs,
        dtype=jnp.bfloat16 if model_cfg.dtype == "bfloat16" else jnp.float32,
        pool_impl=model_cfg.pool_impl,
        patch_channels=model_cfg.patch_conv_channels,
        phase_channels=model_cfg.phase_conv_channels,
        lstm_impl=lstm_impl,
        attention_impl=attention_impl,
        conv_pool_impl=conv_pool_impl,
        freeze_video=model_cfg.freeze_video,
        freeze_face_stream=model_cfg.freeze_face_stream,
    )


# ------------------------------------------------------------------ the face CNN, outside


def face_cnn(model: BimodalModel) -> ImprovedAlexNet:
    """The improved AlexNet that `BimodalModel` builds as its `alexnet` submodule."""
    return ImprovedAlexNet(
        conv_features=model.conv_features,
        conv_strides=model.conv_strides,
        fc_features=model.fc_features,
        num_outputs=model.num_outputs,
        dropout=model.alexnet_dropout,
        fc_impl=model.fc_impl,
        dtype=model.dtype,
        pool_impl=model.pool_impl,
        patch_channels=model.patch_channels,
        phase_channels=model.phase_channels,
        conv_pool_impl=model.conv_pool_impl,
    )


# Auto chunking of inference-mode face CNNs: at most this many bytes of first-convolution output
# per chunk (~3 such buffers live at once: conv output, pooled, normalised).
FACE_CHUNK_BYTES = 512 * 2**20


def face_chunk_frames(model: BimodalModel, image_shape: Sequence[int], setting: int) -> int:
    """Frames per inference-mode CNN chunk: `setting` if > 0, no chunking (0) if 0, else (-1)
    as many as keep the first convolution's output within `FACE_CHUNK_BYTES`."""
    if setting >= 0:
        return setting
    h, w = image_shape[:2]
    s = model.conv_strides[0]
    per_frame = -(-h // s) * -(-w // s) * model.conv_features[0] * jnp.dtype(model.dtype).itemsize
    return max(1, FACE_CHUNK_BYTES // per_frame)


def face_feature_map(
    model: BimodalModel,
    variables: Mapping[str, object],
    faces: jax.Array,
    train_mode: bool,
    rng: jax.Array | None = None,
    chunk_frames: int = 0,
    steps: int | None = None,
) -> tuple[jax.Array, object]:
    """Maps [B, ceil(L/s), k, C] of every s-th step, as `BimodalModel._face_maps` computes them.

    `faces` [B, L, ...] of every step, or (`steps` = L given and faces.shape[1] != L) already
    of every s-th step only (training windows, `pipeline._cut`).

    Computed outside the model (evaluation in chunks, population training) and passed in as
    `face_feature_map`. `variables` are the `alexnet` entries of the model's params (and batch
    stats). Returns the maps and the updated batch statistics (train mode) or None.

    `chunk_frames` > 0 (inference mode only): the frames go through the CNN that many at a time
    (`jax.lax.map`), so a long evaluation batch of large faces never holds all frames'
    activations at once; the maps are the same (per-frame computation, running statistics).
    """
    if steps is None or faces.shape[1] == steps:
        faces = faces[:, :: model.video_frame_stride]
    b, length = faces.shape[:2]
    frames = faces.reshape((b * length,) + faces.shape[2:])
    net = face_cnn(model)
    # The FC layers' dropout does not reach the feature map; any key serves when none is given.
    rngs = {"dropout": rng if rng is not None else jax.random.key(0)}
    if train_mode:
        out, updates = net.apply(
            variables, frames, train=True, head=False, rngs=rngs, mutable=["batch_stats"]
        )
        fmap, new_stats = out["feature_map"], updates["batch_stats"]
    elif 0 < chunk_frames < frames.shape[0]:
        n = frames.shape[0]
        chunks = -(-n // chunk_frames)
        padded = jnp.pad(frames, [(0, chunks * chunk_frames - n)] + [(0, 0)] * (frames.ndim - 1))
        maps = jax.lax.map(
            lambda x: net.apply(variables, x, train=False, head=False)["feature_map"],
            padded.reshape((chunks, chunk_frames) + frames.shape[1:]),
        )
        fmap, new_stats = maps.reshape((chunks * chunk_frames,) + maps.shape[2:])[:n], None
    else:
        fmap, new_stats = net.apply(variables, frames, train=False, head=False)["feature_map"], None
    return fmap.reshape(b, length, fmap.shape[1] * fmap.shape[2], fmap.shape[3]), new_stats
