"""One clock for audio and video: a flash and a burst at the same instant land on the same step.

Containers whose streams start late or at different times (mp4, MPEG-PS, MPEG-TS, mkv), an audio
track with dropped packets, and a frame-time CSV on an absolute clock.
"""

import warnings

import numpy as np
import pytest

from avemo.audio import io as audio_io
from avemo.data.corpora import validate
from avemo.video import io as video_io
from avemo.video.errors import VideoWarning
from tests.media import Media, write_av

STEP = 0.04


def flash_time(path, frame_times=None) -> float:
    for _, time_seconds, frame in video_io.decode(path, frame_times):
        if frame.mean() > 200:
            return time_seconds
    raise AssertionError("no flash")


def burst_time(path, report=None) -> float:
    signal = audio_io.load(path, report=report)
    return float(np.flatnonzero(np.abs(signal) > 0.1)[0]) / 16000


@pytest.mark.parametrize(
    ("suffix", "video_start", "audio_start"),
    [
        (".mp4", 0.0, 0.0),
        (".mpg", 0.0, 0.0),  # the PS muxer starts the streams at ~0.53 / 0.54 s
        (".ts", 0.0, 0.0),
        (".ts", 1.4, 1.48),  # late, different starts (as a TS capture)
        (".mp4", 0.32, 0.0),  # video starts late (-itsoffset)
        (".mkv", 0.0, 0.52),  # audio starts late
    ],
)
def test_flash_and_burst_land_on_the_same_step(tmp_path, suffix, video_start, audio_start):
    event = 2.0 + max(video_start, audio_start)
    media = Media(
        seconds=event + 1.0, video_start=video_start, audio_start=audio_start,
        flash_seconds=event, burst_seconds=event,
    )  # fmt: skip
    path = write_av(tmp_path / f"sync{suffix}", media)
    flash, burst = flash_time(path), burst_time(path)
    # Within one codec delay (MP2 decodes 481 samples late), and on the same 40 ms step.
    assert abs(flash - burst) < 0.015, (flash, burst)
    assert round(flash / STEP) == round(burst / STEP)
    # The grid the front end uses shows the flash from the step at or after its time.
    steps = [s for s, _, f in video_io.step_frames(path, 200, STEP) if f.mean() > 200]
    assert steps[0] == int(np.ceil(flash / STEP - 1e-3))


def test_audio_gap_is_filled_with_silence_not_closed(tmp_path):
    media = Media(seconds=5.0, burst_seconds=4.0, flash_seconds=4.0, drop_audio=(2.0, 3.0))
    path = write_av(tmp_path / "gap.mp4", media)
    report = audio_io.LoadReport()
    burst = burst_time(path, report)
    assert abs(burst - 4.0) < 0.015 and abs(flash_time(path) - 4.0) < 1e-6
    assert report.gaps == 1 and report.gap_seconds == pytest.approx(1.0, abs=0.03)
    assert report.samples == pytest.approx(5.0 * 16000, rel=0.01)


def test_absolute_clock_frame_time_csv_is_shifted_in_reader_and_validator(tmp_path):
    path = write_av(tmp_path / "v.mp4", Media(seconds=3.0, flash_seconds=2.0, with_audio=False))
    csv = tmp_path / "times.csv"
    csv.write_text("frame;time\n" + "".join(f"{i};{1000 + i * STEP:.3f}\n" for i in range(75)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        times = video_io.read_frame_times(csv)
    assert times[0] == 0.0 and times[50] == pytest.approx(2.0)
    assert any(issubclass(w.category, VideoWarning) and "absolute" in str(w.message)
               for w in caught)  # fmt: skip
    steps = [s for s, _, f in video_io.step_frames(path, 75, STEP, times) if f.mean() > 200]
    assert steps[0] == 50
    findings: list = []
    validate.check_frame_times(csv, 75, findings)
    assert [f.severity for f in findings] == ["warning"] and "absolute" in findings[0].message


def test_validator_and_reader_parse_the_same_layouts(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("frameIndex,frameTime\n0,0\n1,40\n2,80\n")  # commas, milliseconds
    findings: list = []
    validate.check_frame_times(csv, 3, findings)
    assert findings == []
    np.testing.assert_allclose(video_io.read_frame_times(csv), [0.0, 0.04, 0.08])
    csv.write_text("frame;time\n0;0.0\n1;0.08\n2;0.04\n")
    validate.check_frame_times(csv, 3, findings)
    assert [f.severity for f in findings] == ["error"] and "backwards" in findings[0].message
