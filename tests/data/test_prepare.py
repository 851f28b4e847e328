"""Preparation cache: content-keyed entries, no-op re-runs, atomic writes, train-only z-norm."""

import json

import numpy as np
import pytest

from avemo.config import base_config
from avemo.data import prepare
from avemo.data.corpora import get_sessions


@pytest.fixture
def config(tiny_corpus, tmp_path):
    c = base_config()
    c.data.corpus = "avec2016"
    c.data.root = str(tiny_corpus)
    c.data.cache_dir = str(tmp_path / "cache")
    c.data.prepare_workers = 1
    c.video.crop_size = 32
    return c


def _forbid_front_ends(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the front ends ran although the cache was complete")

    monkeypatch.setattr(prepare, "run_front_ends", fail)


def test_prepared_sessions_rows_labels_and_train_only_normalisation(config, tmp_path):
    sessions = prepare.prepared_sessions(config, str(tmp_path / "work"))
    by_split = {s.split: s for s in sessions}
    assert set(by_split) == {"train", "dev", "test"}
    for s in sessions:
        t = s.num_steps
        assert s.arrays["faces"].shape == (t, 32, 32, 1)
        assert s.arrays["audio_features"].shape[0] == t == s.arrays["speech_energy"].shape[0]
    assert by_split["train"].arrays["labels"].shape == (by_split["train"].num_steps, 2)
    assert "labels" not in by_split["test"].arrays  # the test split ships without labels
    train_features = by_split["train"].arrays["audio_features"]
    np.testing.assert_allclose(train_features.mean(0), 0.0, atol=1e-4)  # fitted on train ...
    assert np.abs(by_split["dev"].arrays["audio_features"].mean(0)).max() > 1e-2  # ... only
    assert (tmp_path / "work" / prepare.NORMALIZER_FILE).exists()


def test_rerun_with_nothing_changed_does_nothing(config, monkeypatch):
    sessions = get_sessions(config.data)
    first = prepare.prepare(sessions, config)
    stamps = {p: (p / "meta.json").stat().st_mtime_ns for p in first.values()}
    _forbid_front_ends(monkeypatch)
    second = prepare.prepare(sessions, config)
    assert second == first
    assert {p: (p / "meta.json").stat().st_mtime_ns for p in second.values()} == stamps


def test_front_end_config_change_invalidates_the_entry(config):
    sessions = get_sessions(config.data)
    first = prepare.prepare(sessions, config)
    config.video.margin = 0.35
    second = prepare.prepare(sessions, config)
    assert set(first.values()).isdisjoint(second.values())
    assert all(prepare.is_complete(p) for p in second.values())


def test_interrupted_preparation_leaves_nothing_that_looks_complete(config, monkeypatch):
    sessions = get_sessions(config.data)[:1]
    real_save = np.save
    calls = {"n": 0}

    def save_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-write
        return real_save(*args, **kwargs)

    monkeypatch.setattr(prepare.np, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(sessions, config)
    root = prepare.cache_root(config.data)
    assert not [p for p in root.iterdir() if (p / "meta.json").exists()]
    assert not list(root.glob(".tmp-*"))  # the partial directory was removed
    monkeypatch.setattr(prepare.np, "save", real_save)
    entries = prepare.prepare(sessions, config)
    meta = json.loads((entries[sessions[0].name] / "meta.json").read_text())
    assert meta["session"] == sessions[0].name


def test_a_killed_run_is_not_mistaken_for_a_complete_entry(config):
    sessions = get_sessions(config.data)[:1]
    root = prepare.cache_root(config.data)
    root.mkdir(parents=True)
    key = prepare.cache_key(sessions[0], config)
    # A SIGKILL leaves the temporary directory behind, never the final name.
    leftover = root / f".tmp-{sessions[0].name}-killed"
    leftover.mkdir()
    np.save(leftover / "faces.npy", np.zeros(3))
    assert not prepare.is_complete(prepare.entry_dir(root, sessions[0], key))
    entries = prepare.prepare(sessions, config)
    assert prepare.is_complete(entries[sessions[0].name])
