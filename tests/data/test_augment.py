"""Modality dropout: windows whose face / voice is removed by the protocol's transforms, m and n
matching their content, deterministic per window index."""

import numpy as np

from avemo import evaluate, train
from avemo.data import augment, pipeline
from configs import tiny


def _windows(c):
    sessions = train.load_sessions(c, "/nonexistent")
    silence = augment.silent_window(c, None, sessions[0].arrays["audio_features"].shape[-1])
    ds = pipeline.train_dataset(sessions, c, silence=silence)
    return sessions, silence, [next(it) for it in [iter(ds)] for _ in range(12)]


def test_dropped_windows_have_flags_that_match_their_content():
    c = tiny.get_config()
    c.train.modality_dropout = 0.6
    _, silence, batches = _windows(c)
    kinds = {"face": 0, "voice": 0, "both": 0, "none": 0}
    for batch in batches:
        for i in range(batch["faces"].shape[0]):
            no_face = not batch["face_present"][i].any()
            blank = not batch["faces"][i].any()
            silent = np.array_equal(batch["audio_features"][i], silence["audio_features"])
            no_m = not batch["speech_energy"][i].any()
            assert no_face == blank or not no_face  # flag 0 everywhere <=> faces zero (removed)
            if blank:
                assert no_face
            if silent:
                assert no_m  # voice silenced => m = 0 throughout
            kinds[
                "both" if blank and silent else "face" if blank else "voice" if silent else "none"
            ] += 1
    assert kinds["face"] > 0 and kinds["voice"] > 0 and kinds["none"] > 0
    assert kinds["both"] == 0  # one modality at most


def test_off_by_default_and_deterministic():
    c = tiny.get_config()
    assert c.train.modality_dropout == 0.0
    c.train.modality_dropout = 0.5
    _, _, first = _windows(c)
    _, _, again = _windows(c)
    for a, b in zip(first, again):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_silence_is_the_protocols_audio_silenced_transform(tmp_path_factory):
    """On recordings, the silent window is the front end on silence, z-normalised (protocol b)."""
    from tests.trained_model import trained_workdir

    workdir, config = trained_workdir(tmp_path_factory)
    from avemo.audio import normalize

    normalizer = normalize.load(workdir / "normalizer.npz")
    silence = augment.silent_window(config, normalizer, int(normalizer.mean.shape[0]))
    sessions = train.load_sessions(config, str(workdir))
    dev = [s for s in sessions if s.split == "dev"]
    from avemo.data.corpora import get_sessions

    raw = {s.name: s for s in get_sessions(config.data)}
    (silenced,) = evaluate.protocol_sessions("audio_silenced", dev, raw, config, normalizer)
    middle = silenced.arrays["audio_features"][60:80]
    np.testing.assert_allclose(silence["audio_features"][: len(middle)], middle, atol=1e-4)
    assert not silence["speech_energy"].any()
