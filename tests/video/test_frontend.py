"""The video front end end to end (avemo.video.frontend.extract) on generated face videos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from avemo.video import frontend
from avemo.video.errors import VideoError, VideoWarning
from tests.video.generated_videos import FACE_ORIGIN, FACE_PATCH, HEIGHT, WIDTH, write_video


def _absent_steps(result) -> list[int]:
    return np.flatnonzero(result["face_present"] == 0).tolist()


@pytest.mark.parametrize(
    ("fps", "fourcc", "suffix", "blank_frames", "track"),
    [
        (25, "mp4v", ".mp4", range(30, 45), True),
        (25, "mp4v", ".mp4", range(30, 45), False),
        (30, "MJPG", ".avi", range(36, 54), True),
    ],
)
def test_face_absent_for_a_span_gives_zero_flag_exactly_there(
    tmp_path, video_cfg, fps, fourcc, suffix, blank_frames, track
):
    video_cfg.detector.track = track
    # 3 s of video; the face leaves from 1.2 s to 1.8 s, i.e. steps 30 ... 44.
    path = write_video(
        tmp_path / f"v{suffix}", 3 * fps, fps, lambda i: i not in blank_frames, fourcc=fourcc
    )
    result = frontend.extract(path, 75, video_cfg)
    absent = _absent_steps(result)
    assert set(range(31, 44)) <= set(absent) <= set(range(29, 46))  # ± one step at each edge
    present = result["face_present"] == 1
    assert result["face_present"].dtype == np.float32
    assert set(np.unique(result["face_present"])) == {0.0, 1.0}
    # The mask is explicit: no crop and no box where the flag is 0; real pixels where it is 1.
    assert (result["faces"][~present] == 0).all()
    assert np.isnan(result["face_boxes"][~present]).all()
    assert (result["faces"][present].reshape(present.sum(), -1).std(axis=1) > 10).all()
    # Boxes sit on the pasted face (patch at FACE_ORIGIN, face ~43% of the patch, centred).
    x, y, w, h = np.nanmedian(result["face_boxes"], axis=0)
    assert FACE_ORIGIN[0] < x + w / 2 < FACE_ORIGIN[0] + FACE_PATCH
    assert FACE_ORIGIN[1] < y + h / 2 < FACE_ORIGIN[1] + FACE_PATCH
    assert 0.3 * FACE_PATCH < w < 0.7 * FACE_PATCH


def test_output_follows_the_contract(tmp_path, video_cfg):
    path = write_video(tmp_path / "v.mp4", 25, 25)
    video_cfg.crop_size = 32
    video_cfg.color_mode = "rgb"
    result = frontend.extract(path, 25, video_cfg)
    assert set(result) == {"faces", "face_present", "face_boxes"}
    assert result["faces"].shape == (25, 32, 32, 3) and result["faces"].dtype == np.uint8
    assert result["face_present"].shape == (25,)
    assert result["face_boxes"].shape == (25, 4) and result["face_boxes"].dtype == np.float32
    assert (result["face_present"] == 1).all()
    # The astronaut's face is pink-ish: in RGB order red exceeds blue.
    red, blue = result["faces"][..., 0].mean(), result["faces"][..., 2].mean()
    assert red > blue


def test_frame_time_csv_is_used_by_extract(tmp_path, video_cfg):
    # Face in the first 20 of 40 frames. The CSV says frames are 80 ms apart, so the face is on
    # screen for 1.6 s (steps 0-39), not the 0.8 s the 25 fps container implies.
    path = write_video(tmp_path / "v.mp4", 40, 25, lambda i: i < 20)
    csv = tmp_path / "frame_times.csv"
    csv.write_text("frame;time\n" + "".join(f"{i};{i * 0.08:.2f}\n" for i in range(40)))
    with_csv = frontend.extract(path, 80, video_cfg, frame_times_path=csv)
    assert set(range(41, 80)) <= set(_absent_steps(with_csv)) <= set(range(39, 80))
    with pytest.warns(VideoWarning, match="before the last"):
        container = frontend.extract(path, 80, video_cfg)
    assert set(range(21, 80)) <= set(_absent_steps(container)) <= set(range(19, 80))


def test_short_video_is_padded_with_a_warning_within_the_limit(tmp_path, video_cfg):
    path = write_video(tmp_path / "v.mp4", 50, 25)  # 2 s covers steps 0 ... 50
    with pytest.warns(VideoWarning, match="padded with face_present = 0"):
        result = frontend.extract(path, 75, video_cfg)
    assert _absent_steps(result) == list(range(51, 75))
    video_cfg.max_missing_tail_seconds = 0.5
    with pytest.raises(VideoError, match="before the last") as info:
        frontend.extract(path, 75, video_cfg)
    assert str(path) in str(info.value)


def test_no_face_anywhere_gives_all_zero_and_a_warning(tmp_path, video_cfg):
    path = write_video(tmp_path / "v.avi", 20, 25, lambda i: False, fourcc="MJPG")
    with pytest.warns(VideoWarning, match="no face detected"):
        result = frontend.extract(path, 20, video_cfg)
    assert not result["face_present"].any() and not result["faces"].any()


def test_num_steps_none_uses_the_container_duration(tmp_path, video_cfg):
    path = write_video(tmp_path / "v.avi", 30, 30, fourcc="MJPG")  # 1 s → T = 26
    result = frontend.extract(path, None, video_cfg)
    assert result["face_present"].shape == (26,) and result["face_present"].all()


def test_bad_inputs_raise_video_error_naming_the_file(tmp_path, video_cfg):
    zero_frames = tmp_path / "zero_frames.avi"
    writer = cv2.VideoWriter(str(zero_frames), cv2.VideoWriter_fourcc(*"MJPG"), 25, (WIDTH, HEIGHT))
    writer.release()
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(1).bytes(50000))
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    for path in [zero_frames, noise, empty, tmp_path / "missing.mp4"]:
        with pytest.raises(VideoError) as info:
            frontend.extract(path, 10, video_cfg)
        assert str(path) in str(info.value)
    good = write_video(tmp_path / "good.mp4", 5, 25)
    with pytest.raises(VideoError, match="at least 1"):
        frontend.extract(good, 0, video_cfg)
    bad_csv = tmp_path / "times.csv"
    bad_csv.write_text("frame;time\n0;0.0\n1;oops\n")
    with pytest.raises(VideoError) as info:
        frontend.extract(good, 5, video_cfg, frame_times_path=bad_csv)
    assert str(bad_csv) in str(info.value)


def test_truncated_file_gives_padding_or_video_error_never_a_crash(tmp_path, video_cfg):
    data = (tmp_path / write_video(tmp_path / "v.avi", 50, 25, fourcc="MJPG")).read_bytes()
    for keep in (0.6, 0.05):
        cut = tmp_path / f"cut{keep}.avi"
        cut.write_bytes(data[: int(len(data) * keep)])
        try:
            with pytest.warns(VideoWarning):
                result = frontend.extract(cut, 51, video_cfg)
        except VideoError as err:
            assert str(cut) in str(err)
        else:
            assert not result["face_present"][-5:].any()  # past the cut: padded
            if keep == 0.6:
                assert result["face_present"][:20].all()  # before the cut: decoded faces


def test_bad_config_is_rejected(tmp_path, video_cfg):
    path = write_video(tmp_path / "v.mp4", 5, 25)
    video_cfg.color_mode = "hsv"
    with pytest.raises(ValueError, match="color_mode"):
        frontend.extract(path, 5, video_cfg)


def test_time_segments_cover_the_grid_like_one_pass(tmp_path, video_cfg):
    """Parallel workers take time segments (seek + overlap): same steps, same face flags."""
    path = write_video(tmp_path / "v.mp4", 150, 25, face_in_frame=lambda i: not 60 <= i < 90)
    whole = frontend.extract(path, 150, video_cfg)
    present = np.zeros(150, np.float32)
    seen = []
    for first, stop in ((0, 50), (50, 100), (100, 150)):
        for step, crop, _ in frontend.iter_steps(
            path, 150, video_cfg, start_step=max(first - 25, 0), stop_step=stop
        ):
            if step >= first:
                seen.append(step)
                present[step] = crop is not None
    assert seen == list(range(150))
    np.testing.assert_array_equal(present, whole["face_present"])
