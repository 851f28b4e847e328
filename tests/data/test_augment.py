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


def test_far_field_windows_are_the_front_end_on_the_far_field_recording(tmp_path_factory):
    """`train.far_field_augment`: a window's voice is either its clean inputs or, cut at the
    same steps, the front end on the session's own audio through a far-field room drawn from
    FAR_FIELD_RANGES (m from the degraded audio); faces and labels untouched; the protocol's own
    room reproduces `evaluate.far_field`'s inputs."""
    import ml_collections
    import pytest

    from avemo import config as config_lib
    from avemo.audio import normalize
    from avemo.data.corpora import get_sessions
    from tests.trained_model import trained_workdir

    workdir, config = trained_workdir(tmp_path_factory)
    c = ml_collections.ConfigDict(config.to_dict())
    c.train.far_field_augment = 0.5
    sessions = train.load_sessions(c, str(workdir))
    far = train.far_field_inputs(c, str(workdir), sessions)
    trains = [s for s in sessions if s.split == "train"]
    assert sorted(far) == sorted(s.name for s in trains)

    # The protocol's room through the same function gives the protocol's inputs.
    normalizer = normalize.load(workdir / "normalizer.npz")
    raw = {s.name: s for s in get_sessions(c.data)}
    signal = evaluate.session_signal(raw[trains[0].name], c)
    protocol = evaluate.with_audio(
        trains[0], evaluate.far_field(signal, c.audio.sample_rate), c, normalizer
    )
    (expected,) = evaluate.protocol_sessions("far_field", trains[:1], raw, c, normalizer)
    np.testing.assert_allclose(
        protocol.arrays["audio_features"], expected.arrays["audio_features"], atol=1e-6
    )
    # The drawn room is a different one, and quieter speech gives less speech energy m.
    clean = trains[0].arrays
    assert not np.allclose(far[trains[0].name]["audio_features"], clean["audio_features"])
    assert far[trains[0].name]["speech_energy"].mean() < clean["speech_energy"].mean()

    by_content = {"far": 0, "clean": 0}
    source = pipeline.WindowSource(trains, c.train.window_steps, c.train.window_hop_steps)
    ds = pipeline.train_dataset(sessions, c, far_field=far)
    it = iter(ds)
    for _ in range(6):
        batch = next(it)
        assert not any(k.startswith(augment.FAR_FIELD_PREFIX) for k in batch)
        for i in range(batch["labels"].shape[0]):
            # Find the window by its labels and faces (both untouched), then its audio's origin.
            matches = [
                j
                for j in range(len(source))
                if np.array_equal(source[j]["labels"], batch["labels"][i])
                and np.array_equal(source[j]["faces"], batch["faces"][i])
            ]
            assert matches
            name = source._sessions[source._index[matches[0]][0]].name
            start = source._index[matches[0]][1]
            steps = slice(start, start + int(batch["mask"][i].sum()))
            got = batch["audio_features"][i][: steps.stop - steps.start]
            if np.allclose(got, far[name]["audio_features"][steps]):
                by_content["far"] += 1
                np.testing.assert_array_equal(
                    batch["speech_energy"][i][: steps.stop - steps.start],
                    far[name]["speech_energy"][steps],
                )
            else:
                np.testing.assert_array_equal(got, clean_of(sessions, name)[steps])
                by_content["clean"] += 1
    assert by_content["far"] > 0 and by_content["clean"] > 0

    c.data.corpus = "memory"
    with pytest.raises(config_lib.ConfigError, match="far_field_augment"):
        config_lib.validate(c)


def clean_of(sessions, name):
    return next(s for s in sessions if s.name == name).arrays["audio_features"]
