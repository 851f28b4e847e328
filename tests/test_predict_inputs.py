"""Imperfect recordings get a prediction and a note, not a refusal (one tiny container each).

Clipped, short, silent audio; no audio track; no face; a rotated phone video; variable frame
rate; anti-phase stereo. Predictions run in this process (`jobs=0`) with the shared tiny model.
"""

import json

import numpy as np
import pytest

from avemo import inference, predict
from tests.audio.audio_signals import speech_like
from tests.media import Media, write_av
from tests.trained_model import trained_workdir
from tests.video.generated_videos import face_patch

RATE = 48000
SECONDS = 4.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import os

    if os.environ.get("AVEMO_TEST_WORKDIR"):  # a trained tiny workdir, to iterate quickly
        return inference.load(os.environ["AVEMO_TEST_WORKDIR"])
    return inference.load(str(trained_workdir(tmp_path_factory)[0]))


def voice(seconds=SECONDS, gain=1.0):
    return (gain * speech_like(seconds, RATE, seed=3))[:, None]


def media(**changes) -> Media:
    base = dict(seconds=SECONDS, width=160, height=120, face=face_patch(100), audio=voice())
    base.update(changes)
    return Media(**base)


def predicted(model, path, seconds=SECONDS):
    prediction = predict.predict_recording(model, path)
    if seconds is not None:  # T = floor(duration / 40 ms) + 1
        assert prediction["outputs"].shape == (int(np.floor(seconds / 0.04 + 1e-9)) + 1, 2)
    assert np.isfinite(prediction["outputs"]).all()
    return prediction


def test_clean_recording_has_a_face_speech_and_no_notes(model, tmp_path):
    p = predicted(model, write_av(tmp_path / "clean.mp4", media()))
    assert p["face_share"] > 0.9 and p["speech_share"] > 0.3
    assert p["notes"] == [] and p["clipped_share"] < 0.001


def test_clipped_audio_is_predicted_with_the_clipped_share(model, tmp_path):
    clipped = np.clip(voice(gain=8.0), -1, 1)
    p = predicted(model, write_av(tmp_path / "clipped.mov", media(audio=clipped)))
    assert p["clipped_share"] > 0.01
    assert any("% of audio clipped" in n for n in p["notes"]), p["notes"]


def test_short_audio_counts_as_silence_after_its_end(model, tmp_path):
    p = predicted(model, write_av(tmp_path / "short.mp4", media(audio=voice(1.0))))
    assert any("the rest is silence" in n for n in p["notes"]), p["notes"]
    assert np.all(p["speech_energy"][int(2.0 / 0.04) :] == 0)


def test_silent_audio_is_predicted_with_a_note(model, tmp_path):
    silent = np.zeros((int(SECONDS * RATE), 1))
    p = predicted(model, write_av(tmp_path / "silent.mp4", media(audio=silent)))
    assert p["speech_share"] == 0 and np.all(p["speech_energy"] == 0)
    assert any("no speech" in n for n in p["notes"]), p["notes"]


def test_video_without_audio_track_is_face_only(model, tmp_path):
    p = predicted(model, write_av(tmp_path / "mute.mp4", media(with_audio=False)))
    assert np.all(p["speech_energy"] == 0) and p["face_share"] > 0.9  # m = 0, §5.2
    assert any("no audio track" in n for n in p["notes"]), p["notes"]


def test_no_face_anywhere_relies_on_the_voice(model, tmp_path):
    p = predicted(model, write_av(tmp_path / "noface.mp4", media(face=None)))
    assert p["face_share"] == 0 and np.all(p["face_present"] == 0)
    assert p["notes"][0].startswith("no face found")
    # β (the audio gate) then leans on the voice more than with the face in view.
    with_face = predicted(model, write_av(tmp_path / "face.mp4", media()))
    assert np.nanmean(p["audio_gate"]) > np.nanmean(with_face["audio_gate"])


def test_rotated_phone_video_is_turned_upright(model, tmp_path):
    sideways = np.ascontiguousarray(np.rot90(face_patch(100), -1))
    rotated = media(width=120, height=160, face=sideways, rotation=90)
    p = predicted(model, write_av(tmp_path / "phone.mp4", rotated))
    assert p["face_share"] > 0.9
    assert any("rotated by 90" in n for n in p["notes"]), p["notes"]


def test_variable_frame_rate(model, tmp_path):
    gaps = np.random.default_rng(0).choice([0.02, 0.04, 0.07, 0.1], 200)
    times = np.cumsum(np.r_[0.0, gaps])
    times = np.round(times[times < SECONDS - 0.05], 3)
    path = write_av(tmp_path / "vfr.mp4", media(frame_times=times))
    p = predicted(model, path, None)  # the container's duration (its last frame's own length)
    assert abs(p["time"][-1] - times[-1]) < 0.15
    assert p["face_share"] > 0.9


def test_anti_phase_stereo_keeps_its_level(model, tmp_path):
    x = voice()
    mono = predicted(model, write_av(tmp_path / "mono.mkv", media(audio=x)))
    anti = predicted(model, write_av(tmp_path / "anti.mkv", media(audio=np.hstack([x, -x]),
                                                                   channels=2)))  # fmt: skip
    np.testing.assert_allclose(anti["speech_energy"], mono["speech_energy"], atol=0.05)  # AAC
    assert any("louder channel" in n for n in anti["notes"]), anti["notes"]


def test_summary_record_and_line_say_what_was_degraded(model, tmp_path):
    p = predicted(model, write_av(tmp_path / "mute.mp4", media(with_audio=False, face=None)))
    record = predict.summary_record("mute", "mute.mp4", p)
    json.dumps(record)  # serialisable
    line = predict.degradation_line(record)
    assert line.startswith("face found in 0 % of steps") and "no audio track" in line
