"""Shared fixtures for the data tests: a tiny embedded corpus generated once per test session."""

import pathlib

import pytest

from avemo.data.corpora import synthetic

TINY = synthetic.SyntheticOptions(
    seed=0, train_sessions=1, dev_sessions=1, test_sessions=1, seconds=8.0
)


@pytest.fixture(scope="session")
def tiny_options() -> synthetic.SyntheticOptions:
    return TINY


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("tiny_corpus")
    return synthetic.generate(root, TINY, workers=1, progress=False)
