"""Benchmark of prediction on a long recording: wall time, real-time factor, peak memory.

Run: `python -m avemo.bench predict --workdir W [--minutes 60] [--jobs 2] [--keep DIR]`

Generates a 480x360 30 fps mp4 with AAC speech (48 kHz) of the given length: one 64 s clip of
the embedded corpus (a rendered face, a synthesised voice; `avemo.data.corpora.synthetic`) is
rendered once and its packets are remuxed end to end with shifted timestamps, so that writing an
hour takes seconds. Then `python -m avemo.predict` runs on it as a child process while this
process samples the resident memory of the whole process tree (parent, front-end workers) every
0.2 s. Printed: wall time, × real time, peak RSS of the tree (sum over its processes) and of its
largest process, and where the time went (per-stage wall and CPU seconds from the recording's
summary json).
"""

from __future__ import annotations

import argparse
import fractions
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

WIDTH, HEIGHT, FPS = 480, 360, 30
CLIP_SECONDS = 64  # 64 s x 48 kHz = 3000 AAC frames of 1024 samples: clips tile exactly
AUDIO_RATE = 48000


def _render_clip(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A 64 s session of the embedded corpus at 480x360, 30 fps: (mp4v video, 16 kHz wav)."""
    from avemo.data.corpora import synthetic

    options = synthetic.SyntheticOptions(
        seed=7,
        seconds=float(CLIP_SECONDS),
        frame_width=WIDTH,
        frame_height=HEIGHT,
        fps=float(FPS),
    )
    synthetic.generate_session(folder, "clip", "dev", 0, options)
    return folder / "recordings_video" / "clip.mp4", folder / "recordings_audio" / "clip.wav"


def _encode_audio_clip(wav: pathlib.Path, path: pathlib.Path) -> None:
    """The clip's voice as AAC at 48 kHz in an mp4 of its own (packets to remux)."""
    import av
    import soundfile
    import soxr

    voice, rate = soundfile.read(str(wav), dtype="float32")
    voice = soxr.resample(voice, rate, AUDIO_RATE).astype(np.float32)
    voice = np.pad(voice, (0, max(0, CLIP_SECONDS * AUDIO_RATE - voice.size)))
    voice = voice[: CLIP_SECONDS * AUDIO_RATE]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=AUDIO_RATE)
        stream.layout = "mono"
        for start in range(0, voice.size, 1024):
            frame = av.AudioFrame.from_ndarray(
                voice[None, start : start + 1024], format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = AUDIO_RATE, start
            frame.time_base = fractions.Fraction(1, AUDIO_RATE)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_long_video(path: str | os.PathLike, seconds: float, work: pathlib.Path) -> None:
    """An mp4 of `seconds`: the rendered clip's video and AAC packets repeated end to end."""
    import av

    video_clip, wav = _render_clip(work / "clip")
    audio_clip = work / "clip_audio.mp4"
    _encode_audio_clip(wav, audio_clip)
    with (
        av.open(os.fspath(path), "w") as out,
        av.open(str(video_clip)) as vin,
        av.open(str(audio_clip)) as ain,
    ):
        vstream = out.add_stream_from_template(vin.streams.video[0])
        astream = out.add_stream_from_template(ain.streams.audio[0])
        sources = [(vin, vin.streams.video[0], vstream), (ain, ain.streams.audio[0], astream)]
        clips = int(np.ceil(seconds / CLIP_SECONDS))
        for rep in range(clips):
            # Interleave by clip halves is unnecessary: mp4 muxing sorts per stream; write video
            # then audio of each clip (both streams advance together clip by clip).
            for container, stream, target in sources:
                container.seek(0)
                shift = int(round(rep * CLIP_SECONDS / stream.time_base))
                end = int(round(seconds / stream.time_base))
                clip_end = int(round(CLIP_SECONDS / stream.time_base))
                for packet in container.demux(stream):
                    if packet.pts is None or packet.pts < 0 or packet.pts >= clip_end:
                        continue  # the AAC priming and padding frames: clips tile exactly
                    if packet.pts + shift >= end:
                        continue
                    packet.pts += shift
                    packet.dts = None if packet.dts is None else packet.dts + shift
                    packet.stream = target
                    out.mux(packet)


def _tree_rss(pid: int) -> tuple[int, int]:
    """(sum, max) resident bytes over the process and its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    sizes = []
    for p in processes:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
    return sum(sizes), max(sizes, default=0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m avemo.bench predict")
    parser.add_argument("--workdir", required=True, help="a trained avemo workdir")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", help="folder for the generated video (reused if present)")
    args = parser.parse_args(argv)
    folder = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="avemo-bench-predict-"))
    folder.mkdir(parents=True, exist_ok=True)
    seconds = args.minutes * 60
    video = folder / f"long_{args.minutes:g}min.mp4"
    if not video.is_file():
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=folder) as work:
            partial = pathlib.Path(work) / video.name
            write_long_video(partial, seconds, pathlib.Path(work))
            os.replace(partial, video)
        print(f"generated {video} ({seconds:.0f} s) in {time.perf_counter() - started:.1f} s")
    out = folder / "predictions"
    command = [
        sys.executable, "-m", "avemo.predict", "--workdir", args.workdir, str(video),
        "--out", str(out), "--jobs", str(args.jobs), "--overwrite", "--log-every", "60",
    ]  # fmt: skip
    started = time.perf_counter()
    child = subprocess.Popen(command)
    peak_sum = peak_max = 0
    while child.poll() is None:
        total, largest = _tree_rss(child.pid)
        peak_sum, peak_max = max(peak_sum, total), max(peak_max, largest)
        time.sleep(0.2)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        sys.exit(f"avemo.predict failed with exit status {child.returncode}")
    record = json.loads((out / f"{video.stem}.json").read_text())
    print(f"command: {' '.join(command)}")
    print(
        f"{seconds:.0f} s of 480x360 {FPS} fps video with AAC speech: {wall:.1f} s wall, "
        f"{seconds / wall:.1f}x real time; peak RSS {peak_sum / 2**30:.2f} GiB for the process "
        f"tree (largest process {peak_max / 2**30:.2f} GiB)"
    )
    print(f"stage wall seconds: {record['seconds']}")
    print(f"stage CPU seconds:  {record['cpu_seconds']}")
    print(f"face share {record['face_share']:.2f}, speech share {record['speech_share']:.2f}")
