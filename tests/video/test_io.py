"""Decoding, frame times and the 40 ms grid (avemo.video.io) on generated, barcoded videos."""

from __future__ import annotations

import math

import numpy as np
import pytest

from avemo.video import io
from avemo.video.errors import VideoError
from tests.video.generated_videos import read_barcode, write_video

STEP = 0.04


def _decoded_steps(path, num_steps, frame_times=None):
    """step → (frame index reported, frame index read from the pixels)."""
    return {
        step: (index, read_barcode(frame))
        for step, index, frame in io.step_frames(path, num_steps, STEP, frame_times)
    }


@pytest.mark.parametrize(
    ("fps", "fourcc", "suffix"), [(25, "mp4v", ".mp4"), (30, "mp4v", ".mp4"), (30, "MJPG", ".avi")]
)
def test_container_times_map_to_grid(tmp_path, fps, fourcc, suffix):
    num_frames = 60  # 2.4 s at 25 fps, 2.0 s at 30 fps
    path = write_video(tmp_path / f"v{suffix}", num_frames, fps, fourcc=fourcc)
    duration = num_frames / fps
    num_steps = math.floor(duration / STEP) + 1
    got = _decoded_steps(path, num_steps)
    # Closed form of "latest frame at or before t_k": floor(k * 0.04 * fps).
    expected = [math.floor(k * STEP * fps + 1e-9) for k in range(num_steps)]
    expected = [min(e, num_frames - 1) for e in expected]  # the last frame covers the end
    if fps == 25:
        assert expected == list(range(num_frames)) + [num_frames - 1]  # one frame per step
    assert [got[k][0] for k in range(num_steps)] == expected
    # The pixels of the frame handed out are the frame the index says.
    assert all(index == barcode for index, barcode in got.values())


def test_probe_reports_container_metadata(tmp_path):
    path = write_video(tmp_path / "v.avi", 30, 30, fourcc="MJPG")
    info = io.probe(path)
    assert (info.width, info.height, info.frame_count) == (320, 240, 30)
    assert info.fps == pytest.approx(30.0)
    assert info.duration_seconds == pytest.approx(1.0)


def test_step_frame_indices_follows_the_rule():
    times = np.array([0.0, 0.1, 0.1, 0.25, 0.3])  # variable rate, one repeated time
    indices = io.step_frame_indices(times, 12, STEP)
    # t = 0, .04, .08 → 0; .12, .16, .2 → 2 (latest of the two at .1); .24 → 2; .28 → 3;
    # .32, .36, .4 → 4 (end = .3 + median positive interval .1); .44 is past the end.
    assert indices.tolist() == [0, 0, 0, 2, 2, 2, 2, 3, 4, 4, 4, -1]


def test_steps_before_first_frame_take_the_first(tmp_path):
    times = np.array([0.5, 0.6, 0.7])
    assert io.step_frame_indices(times, 4, 0.2).tolist() == [0, 0, 0, 1]


def test_recola_frame_time_csv_overrides_container_times(tmp_path):
    # 25 fps container, but the CSV says the frames were taken every 80 ms from t = 0.
    path = write_video(tmp_path / "v.mp4", 20, 25)
    csv = tmp_path / "times.csv"
    csv.write_text("frame;time\n" + "".join(f"{i};{i * 0.08:.2f}\n" for i in range(20)))
    frame_times = io.read_frame_times(csv)
    got = _decoded_steps(path, 40, frame_times)
    assert [got[k][1] for k in range(40)] == [k // 2 for k in range(40)]
    # With container times the same steps see one frame each (and stop after frame 19).
    container = _decoded_steps(path, 40)
    assert [container[k][1] for k in range(21)] == list(range(20)) + [19]
    assert 21 not in container


@pytest.mark.parametrize(
    "text",
    [
        "frame;time\n0;0.00\n1;0.04\n2;0.08\n",  # AVEC2016 layout
        "0;0.00\n1;0.04\n2;0.08\n",  # no header
        "0.00\n0.04\n0.08\n",  # times only
        "time_ms,frame\n0,0\n40,1\n80,2\n",  # named column, milliseconds, commas
        "\ufeffframeIndex\tframeTime\n0\t0\n1\t40\n2\t80\n\n",  # BOM, tabs, trailing blank line
    ],
)
def test_read_frame_times_tolerates_layouts(tmp_path, text):
    csv = tmp_path / "t.csv"
    csv.write_text(text, encoding="utf-8")
    np.testing.assert_allclose(io.read_frame_times(csv), [0.0, 0.04, 0.08])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("\n\n", "no rows"),
        ("frame;time\n", "no rows"),
        ("frame;time\n0;0.0\n1;abc\n", "line 3"),
        ("0;0.0\n1;0.08\n2;0.04\n", "backwards"),
    ],
)
def test_bad_frame_time_files_name_the_file(tmp_path, text, problem):
    csv = tmp_path / "bad.csv"
    csv.write_text(text, encoding="utf-8")
    with pytest.raises(VideoError, match=problem) as info:
        io.read_frame_times(csv)
    assert str(csv) in str(info.value)


def test_unreadable_videos_raise_video_error_naming_the_file(tmp_path):
    cases = {
        tmp_path / "missing.mp4": "does not exist",
        tmp_path / "empty.mp4": "empty",
        tmp_path / "noise.mp4": "not a readable video",
        tmp_path: "directory",
    }
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    for path, problem in cases.items():
        with pytest.raises(VideoError, match=problem) as info:
            list(io.step_frames(path, 10, STEP))
        assert str(path) in str(info.value)
        assert isinstance(info.value, ValueError)


def test_variable_frame_rate_uses_the_real_frame_times(tmp_path):
    av = pytest.importorskip("av")
    from fractions import Fraction

    from tests.video.generated_videos import make_frame

    gaps = np.random.default_rng(0).choice([0.02, 0.04, 0.07, 0.1], 39)
    times = np.round(np.cumsum(np.r_[0.0, gaps]), 3)
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=50)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for index, time_seconds in enumerate(times):
            frame = av.VideoFrame.from_ndarray(make_frame(index, True)[:, :, ::-1].copy(), "rgb24")
            frame.pts, frame.time_base = round(time_seconds * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    num_steps = math.floor(times[-1] / STEP) + 1
    expected = io.step_frame_indices(times, num_steps, STEP)
    got = _decoded_steps(path, num_steps)
    assert [got[k][1] for k in range(num_steps)] == expected.tolist()
    assert len(set(expected.tolist())) < len(times)  # some frames are skipped, some repeated
