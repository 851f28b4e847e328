"""Shared fixtures of the video front-end tests."""

from __future__ import annotations

import ml_collections
import pytest

from avemo.video import config


@pytest.fixture
def video_cfg() -> ml_collections.ConfigDict:
    return config.defaults()
