"""Loading: formats, rates, channels, video tracks, and one clear AudioError for bad input."""

import fractions

import av
import numpy as np
import pytest
import soundfile

from avemo.audio import AudioError, io
from tests.audio.audio_signals import RATE, tone


def _write_mp4(path, audio: np.ndarray | None, rate: int = 44100, seconds: float = 1.0):
    """An mp4 with an mpeg4 video track and, if given, an AAC audio track (mono float)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=rate)
            audio_stream.layout = "mono"
        for i in range(int(seconds * 25)):
            image = np.full((48, 64, 3), (i * 5) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            frame.time_base = fractions.Fraction(1, 25)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio_stream is not None:
            block = 1024
            for start in range(0, audio.size, block):
                chunk = audio[start : start + block].astype(np.float32)[None, :]
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate = rate
                frame.pts = start
                for packet in audio_stream.encode(frame):
                    container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)


def test_wav_16k_round_trips_on_the_16_bit_grid(tmp_path):
    x = tone(440.0, 0.5, amplitude=0.3)
    soundfile.write(tmp_path / "a.wav", x, RATE, subtype="PCM_16")
    y = io.load(tmp_path / "a.wav")
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1 / 32768)
    np.testing.assert_array_equal(y * 32768, np.rint(y * 32768))


def test_stereo_44k_flac_becomes_16k_mono(tmp_path):
    x = tone(300.0, 1.0, 44100, 0.3) + tone(2500.0, 1.0, 44100, 0.2)
    stereo = np.stack([x, 0.5 * x], axis=1)
    soundfile.write(tmp_path / "a.flac", stereo, 44100)
    y = io.load(tmp_path / "a.flac")
    assert y.shape == (RATE,)
    reference = 0.75 * (tone(300.0, 1.0, RATE, 0.3) + tone(2500.0, 1.0, RATE, 0.2))
    # Same sound: the band-limited resampling keeps the waveform.
    assert np.corrcoef(y[200:-200], reference[200:-200])[0, 1] > 0.99


def test_audio_track_of_a_video_is_decoded_and_time_aligned(tmp_path):
    rate = 44100
    x = np.zeros(rate)
    x[rate // 2 : rate // 2 + rate // 10] = tone(1000.0, 0.1, rate, amplitude=0.5)
    _write_mp4(tmp_path / "v.mp4", x, rate)
    y = io.load(tmp_path / "v.mp4")
    assert abs(y.size - RATE) < 0.05 * RATE
    envelope = np.abs(y) > 0.1
    onset = np.flatnonzero(envelope)[0] / RATE
    assert abs(onset - 0.5) < 0.01


def test_video_without_audio_track(tmp_path):
    _write_mp4(tmp_path / "silent.mp4", None)
    with pytest.raises(AudioError, match=r"silent\.mp4.*no audio track"):
        io.load(tmp_path / "silent.mp4")


def test_bad_files_name_the_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: file is empty"):
        io.load(tmp_path / "empty.wav")
    (tmp_path / "text.wav").write_text("this is not audio at all\n" * 20)
    with pytest.raises(AudioError, match=r"text\.wav: not a readable audio file"):
        io.load(tmp_path / "text.wav")
    with pytest.raises(AudioError, match=r"missing\.wav: no such file"):
        io.load(tmp_path / "missing.wav")
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(AudioError, match=r"junk\.mp4"):
        io.load(tmp_path / "junk.mp4")


def test_truncated_files(tmp_path):
    x = tone(440.0, 1.0, amplitude=0.3)
    for suffix in ("wav", "flac"):
        soundfile.write(tmp_path / f"full.{suffix}", x, RATE)
        data = (tmp_path / f"full.{suffix}").read_bytes()
        (tmp_path / f"cut.{suffix}").write_bytes(data[: len(data) // 2])
        with pytest.raises(AudioError, match=rf"cut\.{suffix}"):
            io.load(tmp_path / f"cut.{suffix}")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "header.wav").write_bytes(data[:30])
    with pytest.raises(AudioError, match=r"header\.wav"):
        io.load(tmp_path / "header.wav")


def test_non_finite_and_clipped_samples(tmp_path):
    x = tone(440.0, 0.5, amplitude=0.3)
    x[100] = np.nan
    soundfile.write(tmp_path / "nan.wav", x, RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: 1 of 8000 samples are NaN or infinite"):
        io.load(tmp_path / "nan.wav")
    with pytest.raises(AudioError, match=r"<array>.*NaN or infinite"):
        io.prepare(np.array([0.0, np.inf]), RATE)
    clipped = np.clip(tone(440.0, 0.5, amplitude=3.0), -1, 1)
    soundfile.write(tmp_path / "clip.wav", clipped, RATE, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"clip\.wav: clipped"):
        io.load(tmp_path / "clip.wav")
    # A few full-scale peaks are accepted.
    peaks = tone(440.0, 0.5, amplitude=0.3)
    peaks[::1000] = 1.0
    assert io.prepare(peaks, RATE).shape == peaks.shape


def test_container_start_offset():
    assert io.container_start_offset(None, 16000) == 0
    assert io.container_start_offset(0.1, 16000) == 1600
    assert io.container_start_offset(-0.0232, 44100) == -1023


def test_stereo_mixdown_neither_cancels_nor_halves():
    """Anti-phase channels would cancel in a plain mean, a dead channel would cost 6 dB."""
    x = tone(300.0, 0.5, amplitude=0.3)
    silent = np.zeros_like(x)
    for stereo in (np.stack([x, -x], 1), np.stack([x, silent], 1), np.stack([silent, x], 1)):
        report = io.LoadReport()
        np.testing.assert_allclose(io.prepare(stereo, RATE, report=report), x, atol=1 / 32768)
        assert report.loudest_channel_share == 1.0
    # Coherent channels: their mean, as before.
    report = io.LoadReport()
    coherent = io.prepare(np.stack([x, 0.8 * x], 1), RATE, report=report)
    np.testing.assert_allclose(coherent, 0.9 * x, atol=1 / 32768)
    assert report.loudest_channel_share == 0.0


def test_clipping_is_reported_and_refused_only_above_the_limit(tmp_path):
    clipped = np.clip(tone(440.0, 0.5, amplitude=3.0), -1, 1)
    report = io.LoadReport()
    io.prepare(clipped, RATE, max_clipped_fraction=1.0, report=report)  # prediction's setting
    assert report.clipped_fraction > 0.5
