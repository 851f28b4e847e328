"""Face-feature backbones for stage-1 learning (Sec. 6.2, 6.4, Fig. 4/5) and the video branch.

The paper compares its improved AlexNet (Sec. 4.2) with a traditional AlexNet, VGG19 and
InceptionV3 on 224x224 / 299x299 crops. Here each is scaled to the small gray crops a 2-core CPU
can train (e.g. 64x64), keeping what distinguishes it:

  alexnet    large kernels first (7x7/2 -> 5x5 -> 3x3 x3, the 11x11/4 -> 5x5 -> 3x3 of AlexNet
             scaled to small inputs), overlapping 3x3/2 max-pooling, no batch normalisation.
             Local response normalisation is left out (later work found it adds nothing).
  vgg        blocks of two 3x3 convolutions + ReLU, then 2x2/2 max-pooling (VGG19 stacks 2-4 per
             block; two per block keeps it trainable here), no batch normalisation.
  inception  a 3x3 stem, then inception modules with parallel 1x1 / 1x1->3x3 / 1x1->5x5 /
             3x3-pool->1x1 branches concatenated (GoogLeNet / InceptionV3 style), batch
             normalisation after every convolution (as InceptionV3), max-pooling between stages.
  improved_alexnet  `avemo.models.alexnet.ImprovedAlexNet`, the paper's network.

Every backbone returns the dict of `ImprovedAlexNet`: `feature_map` [N, h, w, C] (the last
spatial map, the positions attention weighs), `embedding` [N, K] (after the fully connected
layers) and `outputs` [N, num_outputs] (linear: arousal, valence), so any of them can serve as
the video branch. The fully connected head (sizes, dropout) is shared, so that comparisons
differ only in the convolutional part.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from avemo.models.alexnet import ImprovedAlexNet, regression_head, to_float_images
from avemo.models.layers import pool_max

BACKBONES = ("improved_alexnet", "alexnet", "vgg", "inception")


class TraditionalAlexNet(nn.Module):
    """AlexNet's layout scaled down: large first kernels, five convolutions, overlapping pooling.

    Pooling (3x3, stride 2, SAME) follows conv1, conv2 and the last convolution, as in AlexNet.
    """

    conv_features: Sequence[int] = (16, 32, 48, 48, 32)
    kernel_sizes: Sequence[int] = (7, 5, 3, 3, 3)
    conv_strides: Sequence[int] = (2, 1, 1, 1, 1)
    fc_features: Sequence[int] = (256, 256)
    num_outputs: int = 2
    dropout: float = 0.3
    fc_impl: str = "dense"
    dtype: jnp.dtype = jnp.float32
    pool_impl: str = "fast"  # see avemo.models.layers (identical outputs)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        x = to_float_images(images, self.dtype)
        layers = list(zip(self.conv_features, self.kernel_sizes, self.conv_strides, strict=True))
        pool_after = {0, 1, len(layers) - 1}
        for i, (features, kernel, stride) in enumerate(layers):
            x = nn.Conv(
                features,
                (kernel, kernel),
                strides=(stride, stride),
                padding="SAME",
                dtype=self.dtype,
                name=f"conv{i + 1}",
            )(x)
            x = nn.relu(x)
            if i in pool_after:
                x = pool_max(x, (3, 3), (2, 2), "SAME", self.pool_impl)
        embedding, outputs = regression_head(
            x, self.fc_features, self.num_outputs, self.dropout, self.fc_impl, self.dtype, train
        )
        return {"feature_map": x, "embedding": embedding, "outputs": outputs}


class VGGNet(nn.Module):
    """VGG-style: per block `convs_per_block` 3x3 convolutions + ReLU, then 2x2/2 max-pooling."""

    block_features: Sequence[int] = (16, 32, 64)
    convs_per_block: int = 2
    fc_features: Sequence[int] = (256, 256)
    num_outputs: int = 2
    dropout: float = 0.3
    fc_impl: str = "dense"
    dtype: jnp.dtype = jnp.float32
    pool_impl: str = "fast"  # see avemo.models.layers (identical outputs)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        x = to_float_images(images, self.dtype)
        for b, features in enumerate(self.block_features):
            for j in range(self.convs_per_block):
                x = nn.Conv(
                    features,
                    (3, 3),
                    padding="SAME",
                    dtype=self.dtype,
                    name=f"block{b + 1}_conv{j + 1}",
                )(x)
                x = nn.relu(x)
            x = pool_max(x, (2, 2), (2, 2), impl=self.pool_impl)
        embedding, outputs = regression_head(
            x, self.fc_features, self.num_outputs, self.dropout, self.fc_impl, self.dtype, train
        )
        return {"feature_map": x, "embedding": embedding, "outputs": outputs}


class _ConvBN(nn.Module):
    """Convolution -> batch normalisation -> ReLU (the InceptionV3 unit)."""

    features: int
    kernel_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            padding="SAME",
            use_bias=False,
            dtype=self.dtype,
        )(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
        return nn.relu(x)


class InceptionModule(nn.Module):
    """Four parallel branches concatenated on channels: 1x1 | 1x1->3x3 | 1x1->5x5 | pool->1x1.

    `features` = (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection), GoogLeNet's order.
    """

    features: Sequence[int]
    dtype: jnp.dtype = jnp.float32
    pool_impl: str = "fast"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        f1, r3, f3, r5, f5, fp = self.features
        b1 = _ConvBN(f1, 1, self.dtype, name="b1x1")(x, train)
        b3 = _ConvBN(r3, 1, self.dtype, name="b3x3_reduce")(x, train)
        b3 = _ConvBN(f3, 3, self.dtype, name="b3x3")(b3, train)
        b5 = _ConvBN(r5, 1, self.dtype, name="b5x5_reduce")(x, train)
        b5 = _ConvBN(f5, 5, self.dtype, name="b5x5")(b5, train)
        bp = pool_max(x, (3, 3), (1, 1), "SAME", self.pool_impl)
        bp = _ConvBN(fp, 1, self.dtype, name="pool_proj")(bp, train)
        return jnp.concatenate([b1, b3, b5, bp], axis=-1)


class InceptionNet(nn.Module):
    """Stem (3x3 conv + 2x2/2 pool), then inception modules, 2x2/2 max-pool after each stage.

    `module_features` lists one `InceptionModule.features` tuple per module; `pool_after` the
    indices of the modules followed by pooling.
    """

    stem_features: int = 16
    module_features: Sequence[Sequence[int]] = ((8, 8, 16, 4, 8, 8), (16, 16, 32, 4, 8, 8))
    pool_after: Sequence[int] = (0, 1)
    fc_features: Sequence[int] = (256, 256)
    num_outputs: int = 2
    dropout: float = 0.3
    fc_impl: str = "dense"
    dtype: jnp.dtype = jnp.float32
    pool_impl: str = "fast"  # see avemo.models.layers (identical outputs)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        x = to_float_images(images, self.dtype)
        x = _ConvBN(self.stem_features, 3, self.dtype, name="stem")(x, train)
        x = pool_max(x, (2, 2), (2, 2), impl=self.pool_impl)
        for i, features in enumerate(self.module_features):
            x = InceptionModule(
                tuple(features), self.dtype, self.pool_impl, name=f"inception{i + 1}"
            )(x, train)
            if i in tuple(self.pool_after):
                x = pool_max(x, (2, 2), (2, 2), impl=self.pool_impl)
        embedding, outputs = regression_head(
            x, self.fc_features, self.num_outputs, self.dropout, self.fc_impl, self.dtype, train
        )
        return {"feature_map": x, "embedding": embedding, "outputs": outputs}


def build_backbone(name: str, cfg: ml_collections.ConfigDict, mesh_devices: int = 1) -> nn.Module:
    """The backbone `name` (one of `BACKBONES`) sized by the full config `cfg`.

    `improved_alexnet` takes `cfg.model.alexnet` -- the very keys of the bimodal model's video
    branch, so its stage-1 weights fit that branch. The others take their convolutional sizes from
    `cfg.stage1.<name>` and share the head (`cfg.model.alexnet.fc_features`, `.dropout`,
    `.fc_impl`) and `cfg.model.num_outputs` / `cfg.model.dtype`.

    `mesh_devices` > 1: the native convolution + pooling gives way to XLA's ops (see
    `avemo.models.bimodal.build_model`).

    Raises:
      ValueError: for an unknown name.
    """
    m = cfg.model
    dtype = jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32
    head = {
        "fc_features": tuple(m.alexnet.fc_features),
        "num_outputs": m.num_outputs,
        "dropout": m.alexnet.dropout,
        "fc_impl": m.alexnet.fc_impl,
        "dtype": dtype,
        "pool_impl": m.pool_impl,
    }
    if name == "improved_alexnet":
        return ImprovedAlexNet(
            conv_features=tuple(m.alexnet.conv_features),
            conv_strides=tuple(m.alexnet.conv_strides),
            patch_channels=m.patch_conv_channels,
            phase_channels=m.phase_conv_channels,
            conv_pool_impl=m.conv_pool_impl if mesh_devices == 1 else "xla",
            **head,
        )
    if name == "alexnet":
        a = cfg.stage1.alexnet
        return TraditionalAlexNet(
            conv_features=tuple(a.conv_features),
            kernel_sizes=tuple(a.kernel_sizes),
            conv_strides=tuple(a.conv_strides),
            **head,
        )
    if name == "vgg":
        v = cfg.stage1.vgg
        return VGGNet(
            block_features=tuple(v.block_features), convs_per_block=v.convs_per_block, **head
        )
    if name == "inception":
        i = cfg.stage1.inception
        return InceptionNet(
            stem_features=i.stem_features,
            module_features=tuple(tuple(f) for f in i.module_features),
            pool_after=tuple(i.pool_after),
            **head,
        )
    raise ValueError(f"unknown backbone {name!r} (expected one of {BACKBONES})")
