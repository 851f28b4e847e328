"""Comparison backbones (Sec. 6.4): the contracted output dict, their defining layers, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avemo.config import base_config
from avemo.models import backbones
from avemo.models.bimodal import build_model


def _config():
    c = base_config()
    c.model.alexnet.conv_features = (4, 8, 8)
    c.model.alexnet.fc_features = (16, 12)
    c.stage1.alexnet.conv_features = (4, 8, 8, 8, 8)
    c.stage1.vgg.block_features = (4, 8, 8)
    c.stage1.inception.stem_features = 4
    c.stage1.inception.module_features = ((2, 2, 4, 2, 2, 2), (4, 4, 4, 2, 2, 2))
    return c


@pytest.mark.parametrize("name", backbones.BACKBONES)
def test_every_backbone_returns_the_contracted_dict(name):
    channels = 3 if name == "vgg" else 1  # gray crops by default; colour works the same
    images = jax.random.randint(jax.random.key(0), (3, 32, 32, channels), 0, 256).astype(jnp.uint8)
    net = backbones.build_backbone(name, _config())
    variables = jax.jit(net.init)(jax.random.key(1), images)
    out = jax.jit(net.apply)(variables, images)
    assert set(out) == {"feature_map", "embedding", "outputs"}
    assert out["feature_map"].ndim == 4 and out["feature_map"].shape[0] == 3
    assert out["feature_map"].shape[1] >= 2  # still a spatial map for the attention (Eq. 28)
    assert out["embedding"].shape == (3, 12)
    assert out["outputs"].shape == (3, 2) and out["outputs"].dtype == jnp.float32
    assert np.all(np.isfinite(out["outputs"]))
    # Training mode: dropout is active, and batch-normalised nets update their running stats.
    train_apply = jax.jit(
        lambda v, x: net.apply(
            v, x, train=True, rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"]
        )
    )
    train_out, updates = train_apply(variables, images)
    assert train_out["outputs"].shape == (3, 2)
    assert not np.allclose(train_out["embedding"], out["embedding"])
    if "batch_stats" in variables:
        assert any(
            not np.allclose(a, b)
            for a, b in zip(
                jax.tree.leaves(updates["batch_stats"]),
                jax.tree.leaves(variables["batch_stats"]),
                strict=True,
            )
        )


def test_backbones_have_their_defining_layers():
    c = _config()
    x = jnp.zeros((1, 32, 32, 1), jnp.uint8)
    params = {
        name: jax.eval_shape(backbones.build_backbone(name, c).init, jax.random.key(0), x)["params"]
        for name in backbones.BACKBONES
    }
    # Traditional AlexNet: a large strided first kernel, five convolutions, no batch norm.
    assert params["alexnet"]["conv1"]["kernel"].shape == (7, 7, 1, 4)
    assert sum(k.startswith("conv") for k in params["alexnet"]) == 5
    # VGG: two 3x3 convolutions per block.
    vgg = params["vgg"]
    assert sorted(k for k in vgg if k.startswith("block1")) == ["block1_conv1", "block1_conv2"]
    assert all(vgg[k]["kernel"].shape[:2] == (3, 3) for k in vgg if k.startswith("block"))
    # Inception: 1x1, 3x3 and 5x5 branches whose outputs are concatenated.
    module = params["inception"]["inception1"]
    assert module["b1x1"]["Conv_0"]["kernel"].shape[:2] == (1, 1)
    assert module["b3x3"]["Conv_0"]["kernel"].shape[:2] == (3, 3)
    assert module["b5x5"]["Conv_0"]["kernel"].shape[:2] == (5, 5)
    assert module["pool_proj"]["Conv_0"]["kernel"].shape[:2] == (1, 1)
    net = backbones.build_backbone("inception", c)
    fmap = jax.eval_shape(lambda: net.apply(net.init(jax.random.key(0), x), x))["feature_map"]
    assert fmap.shape[-1] == sum((4, 4, 2, 2))  # 1x1 + 3x3 + 5x5 + pool projection of module 2


def test_improved_alexnet_backbone_matches_the_bimodal_video_branch():
    c = _config()
    faces = jnp.zeros((1, 32, 32, 1), jnp.uint8)
    single = jax.eval_shape(
        backbones.build_backbone("improved_alexnet", c).init, jax.random.key(0), faces
    )
    batch = {
        "faces": jnp.zeros((1, 4, 32, 32, 1), jnp.uint8),
        "audio_features": jnp.zeros((1, 4, 8), jnp.float32),
    }
    bimodal = jax.eval_shape(build_model(c.model).init, jax.random.key(0), batch)
    shapes = lambda tree: jax.tree.map(lambda a: a.shape, tree)  # noqa: E731
    assert shapes(single["params"]) == shapes(bimodal["params"]["alexnet"])
    assert shapes(single["batch_stats"]) == shapes(bimodal["batch_stats"]["alexnet"])


def test_unknown_backbone_is_an_error():
    with pytest.raises(ValueError, match="resnet"):
        backbones.build_backbone("resnet", _config())
