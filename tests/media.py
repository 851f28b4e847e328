"""Tiny generated containers for the prediction and one-clock tests (PyAV, no ffmpeg binary).

`write_av` muxes a video stream (gray frames, an optional bright "flash" frame and an optional
face) and an audio stream (quiet noise with an optional 1 kHz burst) with chosen stream start
times, dropped audio spans, display rotation and frame times, into mp4, mpg (MPEG-PS), ts
(MPEG-TS), mkv or avi. Times in the arguments are media times: the flash and the burst happen at
`event_seconds` after each stream's own content start, which the muxer shifts by the start offsets.
"""

from __future__ import annotations

import dataclasses
import fractions
import pathlib

import av
import numpy as np

CODECS = {  # suffix -> (video codec, audio codec, audio sample format)
    ".mp4": ("mpeg4", "aac", "fltp"),
    ".mpg": ("mpeg1video", "mp2", "s16"),
    ".ts": ("mpeg2video", "mp2", "s16"),
    ".mkv": ("mpeg4", "aac", "fltp"),
    ".avi": ("mpeg4", "mp2", "s16"),
    ".mov": ("mpeg4", "pcm_s16le", "s16"),  # lossless audio: clipped samples stay at full scale
}


@dataclasses.dataclass
class Media:
    seconds: float = 4.0
    fps: float = 25.0
    width: int = 64
    height: int = 48
    audio_rate: int = 48000
    channels: int = 1
    video_start: float = 0.0  # pts of the first video frame (seconds)
    audio_start: float = 0.0  # pts of the first audio frame (seconds)
    flash_seconds: float | None = None  # on the common clock (= media time + stream start)
    burst_seconds: float | None = None
    drop_audio: tuple[float, float] | None = None  # audio frames in [a, b) are not muxed
    rotation: int = 0
    frame_times: np.ndarray | None = None  # explicit frame pts (VFR), seconds
    face: np.ndarray | None = None  # BGR image pasted in the middle of every frame
    audio: np.ndarray | None = None  # [n, channels] samples instead of noise + burst
    with_audio: bool = True


def audio_samples(m: Media) -> np.ndarray:
    """[n, channels] float samples of the audio stream, starting at the stream's start."""
    if m.audio is not None:
        return np.asarray(m.audio, np.float64).reshape(len(m.audio), -1)
    n = int(round((m.seconds - m.audio_start) * m.audio_rate))
    rng = np.random.default_rng(0)
    x = 0.003 * rng.standard_normal(n)
    if m.burst_seconds is not None:
        start = int(round((m.burst_seconds - m.audio_start) * m.audio_rate))
        t = np.arange(int(0.2 * m.audio_rate)) / m.audio_rate
        x[start : start + t.size] += 0.5 * np.sin(2 * np.pi * 1000 * t)
    return np.repeat(x[:, None], m.channels, axis=1)


def write_av(path: str | pathlib.Path, m: Media) -> pathlib.Path:
    path = pathlib.Path(path)
    vcodec, acodec, aformat = CODECS[path.suffix]
    # MPEG-1/2 video needs the frame rate as time base; MPEG-4 takes milliseconds (VFR).
    mpeg12 = vcodec in ("mpeg1video", "mpeg2video")
    tb = fractions.Fraction(1, int(m.fps)) if mpeg12 else fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        video = container.add_stream(vcodec, rate=int(m.fps))
        video.width, video.height, video.pix_fmt = m.width, m.height, "yuv420p"
        video.codec_context.time_base = tb
        if m.rotation:
            video.set_display_rotation(m.rotation)
        audio = None
        if m.with_audio:
            audio = container.add_stream(acodec, rate=m.audio_rate)
            audio.layout = "mono" if m.channels == 1 else "stereo"
        times = m.frame_times
        if times is None:
            count = int(round((m.seconds - m.video_start) * m.fps))
            times = m.video_start + np.arange(count) / m.fps
        # Interleave: video frames and audio frames in time order.
        events = [(float(t), "v", i) for i, t in enumerate(times)]
        samples = audio_samples(m) if audio is not None else None
        block = 1152
        if samples is not None:
            for start in range(0, len(samples), block):
                events.append((m.audio_start + start / m.audio_rate, "a", start))
        events.sort(key=lambda e: (e[0], e[1]))
        for t, kind, i in events:
            if kind == "v":
                image = np.full((m.height, m.width, 3), 60, np.uint8)
                if m.face is not None:
                    fh, fw = m.face.shape[:2]
                    y, x = (m.height - fh) // 2, (m.width - fw) // 2
                    image[y : y + fh, x : x + fw] = m.face
                if m.flash_seconds is not None and abs(t - m.flash_seconds) < 0.5 / m.fps:
                    image[:] = 250
                frame = av.VideoFrame.from_ndarray(image[:, :, ::-1].copy(), format="rgb24")
                frame.pts, frame.time_base = int(round(t / tb)), tb
                for packet in video.encode(frame):
                    container.mux(packet)
            else:
                if m.drop_audio is not None and m.drop_audio[0] <= t < m.drop_audio[1]:
                    continue
                chunk = samples[i : i + block]
                if len(chunk) < block:
                    chunk = np.pad(chunk, ((0, block - len(chunk)), (0, 0)))
                if aformat == "s16":
                    data = np.clip(np.rint(chunk * 32767), -32768, 32767).astype(np.int16)
                    data = data.reshape(1, -1)  # packed
                else:
                    data = chunk.T.astype(np.float32).copy()
                frame = av.AudioFrame.from_ndarray(data, format=aformat, layout=audio.layout.name)
                frame.sample_rate = m.audio_rate
                frame.pts = int(round(t * m.audio_rate))
                frame.time_base = fractions.Fraction(1, m.audio_rate)
                for packet in audio.encode(frame):
                    container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is not None:
            for packet in audio.encode():
                container.mux(packet)
    return path
