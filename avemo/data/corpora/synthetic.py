"""The embedded corpus: a seeded generator of real files in the AVEC2016 layout.

Raw data for the whole system without licensed recordings: per session a 25 fps mp4 of a real face
photograph (skimage's astronaut) warped by the latent emotion, a 16 kHz wav of source–filter speech
driven by it, and gold-standard ARFF files averaged from six simulated, delayed, noisy raters. It
contains the hard cases of the paper's §5.2 (no face in view, silence, a distant second speaker).
The test split's gold standard is written apart, under ``hidden_test_labels/`` (never under
``ratings_gold_standard/``), as the AVEC organisers kept it: readers, preparation, training,
checkpoint selection and post-processing never see it; only ``python -m avemo.evaluate --split
test`` reads it (``hidden_test_labels``). ``voice_valence`` < 1 gives the hard variant, whose voice
carries little valence.
Run ``python -m avemo.data.corpora.synthetic --out DIR [--size default|large|tiny] [--seed N]``.
See docs/corpus.md for the design and measured properties.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import pathlib
import sys
import tempfile
import time

import cv2
import numpy as np
import soundfile
from scipy import ndimage, signal

from avemo.data.corpora import arff_io
from avemo.data.corpora.base import CorpusError

# Bump when the generator's output changes, so cached corpora are regenerated.
# 3: the test split's gold standard and ground truth are written under HIDDEN_DIR; test_seconds and
# voice_valence options.
GENERATOR_VERSION = 3
MARKER_NAME = "corpus.json"
# The hidden test gold standard: {arousal,valence}/test_k.arff and ground_truth/test_k.npz.
HIDDEN_DIR = "hidden_test_labels"
STEP_SECONDS = 0.04

# Segment kinds of the hard-case schedule (ground_truth/*.npz "segment").
NORMAL, NO_FACE, SILENCE, SECOND_SPEAKER = 0, 1, 2, 3
SEGMENT_NAMES = ("normal", "no_face", "silence", "second_speaker")
# Share of the time each hard case takes (each of the three).
HARD_CASE_SHARE = 0.14

SIZES = {
    # For tests: a few seconds per session.
    "tiny": dict(train_sessions=1, dev_sessions=1, test_sessions=1, seconds=8.0),
    # Generated in about a minute on 2 cores (see docs/corpus.md).
    "default": dict(train_sessions=6, dev_sessions=3, test_sessions=2, seconds=60.0),
    # RECOLA/AVEC2016-like: 9/9/9 sessions of 300 s.
    "large": dict(train_sessions=9, dev_sessions=9, test_sessions=9, seconds=300.0),
}


@dataclasses.dataclass(frozen=True)
class SyntheticOptions:
    """What to generate; mirrors ``config.data.synthetic`` (avemo/data/config.py)."""

    seed: int = 0
    train_sessions: int = 6
    dev_sessions: int = 3
    test_sessions: int = 2
    seconds: float = 60.0
    frame_width: int = 320
    frame_height: int = 240
    fps: float = 25.0
    sample_rate: int = 16000
    num_raters: int = 6
    test_seconds: float = 0.0  # duration of each test session; 0 = `seconds`
    # Strength of the voice's valence cues (pitch level, spectral tilt, formant shift): 1 = the
    # default corpus; the hard variant (0.35) leaves valence mostly to the face.
    voice_valence: float = 1.0

    @classmethod
    def from_config(cls, cfg) -> SyntheticOptions:
        """Builds options from ``config.data.synthetic`` (``workers`` does not change content)."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: cfg[name] for name in names})

    @classmethod
    def of_size(cls, size: str, seed: int = 0) -> SyntheticOptions:
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
        return cls(seed=seed, **SIZES[size])

    def session_names(self) -> list[tuple[str, str, int]]:
        """(name, split, index) for every session, AVEC-style names ``{split}_{k}`` from 1."""
        counts = {
            "train": self.train_sessions,
            "dev": self.dev_sessions,
            "test": self.test_sessions,
        }
        return [(f"{split}_{k}", split, k) for split, n in counts.items() for k in range(1, n + 1)]

    def fingerprint(self) -> str:
        content = json.dumps([GENERATOR_VERSION, dataclasses.asdict(self)], sort_keys=True)
        return hashlib.sha256(content.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Latent emotion, hard-case schedule, raters (all on the 40 ms step grid).


def smooth_noise(rng: np.random.Generator, num: int, sigma_steps: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation."""
    noise = ndimage.gaussian_filter1d(rng.standard_normal(num), sigma_steps, mode="reflect")
    return (noise - noise.mean()) / (noise.std() + 1e-12)


def latent_trajectory(rng: np.random.Generator, num_steps: int) -> np.ndarray:
    """A smooth emotion trajectory in (−1, 1): slow and medium filtered noise, tanh-squashed."""
    slow = smooth_noise(rng, num_steps, 8.0 / STEP_SECONDS)
    medium = smooth_noise(rng, num_steps, 3.0 / STEP_SECONDS)
    offset = rng.normal(0.0, 0.3)  # Sessions differ in their mean mood.
    return np.tanh(offset + 0.8 * slow + 0.5 * medium)


def hard_case_schedule(rng: np.random.Generator, num_steps: int) -> np.ndarray:
    """Per-step segment kind: each ~20 s cycle holds one span of each hard case, in random order."""
    segment = np.full(num_steps, NORMAL, dtype=np.int8)
    num_cycles = max(1, round(num_steps * STEP_SECONDS / 20.0))
    edges = np.linspace(0, num_steps, num_cycles + 1).astype(int)
    for start, stop in zip(edges[:-1], edges[1:]):
        length = stop - start
        hard = [int(round(length * HARD_CASE_SHARE * rng.uniform(0.8, 1.2))) for _ in range(3)]
        kinds = rng.permutation([NO_FACE, SILENCE, SECOND_SPEAKER])
        # Normal stretches before, between and after the three hard spans.
        normal = rng.dirichlet(np.full(4, 2.0)) * max(length - sum(hard), 0)
        normal = np.floor(normal).astype(int)
        position = start + normal[0]
        for kind, span, gap in zip(kinds, hard, normal[1:]):
            segment[position : min(position + span, stop)] = kind
            position += span + gap
    return segment


def phrase_mask(rng: np.random.Generator, arousal: np.ndarray) -> np.ndarray:
    """Speaking turns of 1.5–4 s separated by pauses, longer when arousal is low."""
    num_steps = arousal.size
    mask = np.zeros(num_steps, dtype=bool)
    position = int(rng.uniform(0, 0.5) / STEP_SECONDS)
    while position < num_steps:
        length = int(rng.uniform(1.5, 4.0) / STEP_SECONDS)
        mask[position : position + length] = True
        position += length
        if position >= num_steps:
            break
        pause = rng.uniform(0.2, 0.8) * (1.6 - 0.8 * arousal[position])
        position += max(1, int(pause / STEP_SECONDS))
    return mask


def rate(rng: np.random.Generator, latent: np.ndarray, num_raters: int) -> np.ndarray:
    """Simulated raters: each follows the latent with its own delay, gain, bias, lag and noise.

    Returns:
      ``[num_raters, T]`` ratings in [−1, 1]; their mean is the gold standard.
    """
    num_steps = latent.size
    ratings = np.empty((num_raters, num_steps))
    steps = np.arange(num_steps)
    for rater in range(num_raters):
        delay = rng.uniform(1.0, 3.0) / STEP_SECONDS
        delayed = np.interp(steps - delay, steps, latent)
        # Raters move a joystick: a first-order lag of ~0.5 s.
        lagged = signal.lfilter([0.08], [1.0, -0.92], delayed - delayed[0]) + delayed[0]
        noise = 0.15 * smooth_noise(rng, num_steps, 0.6 / STEP_SECONDS)
        noise += 0.03 * rng.standard_normal(num_steps)
        ratings[rater] = rng.uniform(0.75, 1.15) * lagged + rng.normal(0, 0.05) + noise
    return np.clip(ratings, -1.0, 1.0)


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Concordance correlation coefficient (the paper's Eq. (35))."""
    covariance = np.mean((x - x.mean()) * (y - y.mean()))
    return float(2 * covariance / (x.var() + y.var() + (x.mean() - y.mean()) ** 2))


# ----------------------------------------------------------------------------------------------
# Audio: a vectorised source–filter synthesiser.

# (F1, F2, F3) in Hz of five vowels (a, e, i, o, u), adult female.
VOWEL_FORMANTS = np.array(
    [[850, 1600, 2800], [550, 2100, 2900], [350, 2600, 3200], [500, 900, 2700], [350, 800, 2600]],
    dtype=np.float64,
)
FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 160.0])


def _formant_sos(formants: np.ndarray, sample_rate: int) -> np.ndarray:
    """Second-order sections of a cascade of resonators (one pole pair per formant)."""
    sections = []
    for frequency, bandwidth in zip(formants, FORMANT_BANDWIDTHS):
        radius = np.exp(-np.pi * bandwidth / sample_rate)
        theta = 2 * np.pi * frequency / sample_rate
        a = [1.0, -2 * radius * np.cos(theta), radius**2]
        sections.append([sum(a), 0.0, 0.0, *a])  # Unit gain at DC.
    return np.array(sections)


def synthesize_voice(
    rng: np.random.Generator,
    arousal: np.ndarray,
    valence: np.ndarray,
    active: np.ndarray,
    sample_rate: int,
    f0_base: float,
    formant_scale: float = 1.0,
    voice_valence: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like sound whose prosody follows arousal (and spectral tilt valence).

    Arousal raises pitch level and range, loudness and speaking rate; valence brightens the
    spectrum and raises the formants (a smile shortens the vocal tract). Glottal pulses
    (Rosenberg) at a time-varying f0 go through one of five vowel formant filters per syllable;
    syllables have a consonant burst and a sin² nucleus envelope.

    Args:
      arousal, valence, active: Per-sample controls (active in [0, 1] gates speech).
      voice_valence: Scales the three valence cues (1: pitch +0.5 st, tilt 0.45, formants +8 %
        at valence 1).

    Returns:
      ``(waveform, envelope)`` per sample; the envelope is the syllable amplitude (0 in pauses).
    """
    num = arousal.size
    syllable_rate = 4.0 + 1.5 * arousal  # Hz
    syllable_phase = np.cumsum(syllable_rate) / sample_rate + rng.uniform()
    syllable = syllable_phase.astype(np.int64)
    within = syllable_phase - syllable
    syllable -= syllable[0]
    num_syllables = int(syllable[-1]) + 1
    vowel = rng.integers(0, len(VOWEL_FORMANTS), num_syllables)
    amplitude = np.exp(rng.normal(0.0, 0.25, num_syllables))
    accent = rng.normal(0.0, 1.0, num_syllables)
    has_consonant = rng.uniform(size=num_syllables) < 0.6
    nucleus = rng.uniform(0.55, 0.8, num_syllables)

    onset = np.where(has_consonant, 0.15, 0.02)[syllable]
    position = (within - onset) / nucleus[syllable]
    envelope = np.where((position > 0) & (position < 1), np.sin(np.pi * position) ** 2, 0.0)
    envelope *= amplitude[syllable] * active

    # Pitch: level and range grow with arousal; a rise–fall accent per syllable; slow drift.
    semitones = (
        4.0 * arousal
        + (1.5 + 1.5 * (arousal + 1)) * accent[syllable] * np.sin(np.pi * np.clip(position, 0, 1))
        + 0.5 * voice_valence * valence
    )
    f0 = f0_base * 2.0 ** (semitones / 12.0)
    glottal_phase = np.cumsum(f0) / sample_rate
    cycle = glottal_phase - np.floor(glottal_phase)
    opening, closing = 0.4, 0.16
    flow = np.where(
        cycle < opening,
        0.5 * (1 - np.cos(np.pi * cycle / opening)),
        np.where(cycle < opening + closing, np.cos(0.5 * np.pi * (cycle - opening) / closing), 0.0),
    )
    source = np.diff(flow, prepend=0.0)
    source += 0.02 * rng.standard_normal(num) * flow  # Aspiration.
    # Brightness (spectral tilt): mix in a pre-emphasised copy; more with valence and arousal.
    emphasised = source - 0.95 * np.concatenate([[0.0], source[:-1]])
    brightness = np.clip(0.6 + 0.45 * voice_valence * valence + 0.2 * arousal, 0.05, None)
    source = source + brightness * emphasised

    smile = (valence + 1.0) / 2.0
    voiced = np.zeros(num)
    for index, formants in enumerate(VOWEL_FORMANTS):
        selected = vowel[syllable] == index
        if not selected.any():
            continue
        for shift, weight in ((1.0, 1.0 - smile), (1.0 + 0.08 * voice_valence, smile)):
            sos = _formant_sos(formants * formant_scale * shift, sample_rate)
            filtered = signal.sosfilt(sos, source)
            filtered /= np.sqrt(np.mean(filtered**2)) + 1e-12
            voiced += np.where(selected, weight * filtered, 0.0)
    voiced *= envelope

    # Consonant bursts: high-passed noise just before the nucleus.
    burst_position = within / 0.15
    burst = np.where(
        has_consonant[syllable] & (burst_position < 1), np.sin(np.pi * burst_position), 0.0
    )
    fricative = np.diff(rng.standard_normal(num), prepend=0.0)
    consonants = 0.35 * fricative * burst * amplitude[syllable] * active

    loudness = 10.0 ** ((7.0 * arousal) / 20.0)
    return (voiced + consonants) * loudness, envelope


def distant(rng: np.random.Generator, voice: np.ndarray, sample_rate: int) -> np.ndarray:
    """A far, quiet talker: low-passed at 1.8 kHz and reverberated (exponential-decay tail)."""
    sos = signal.butter(4, 1800, "lowpass", fs=sample_rate, output="sos")
    dry = signal.sosfilt(sos, voice)
    tail = np.arange(int(0.5 * sample_rate)) / sample_rate
    response = rng.standard_normal(tail.size) * np.exp(-tail / 0.12)
    response /= np.sqrt(np.sum(response**2))
    wet = signal.fftconvolve(dry, response)[: dry.size]
    return 0.3 * dry + 0.7 * wet


def render_audio(
    rng: np.random.Generator,
    arousal: np.ndarray,
    valence: np.ndarray,
    subject_speaking: np.ndarray,
    other_speaking: np.ndarray,
    num_samples: int,
    sample_rate: int,
    voice_valence: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The session's audio: the subject, the distant second speaker, and room noise.

    Returns:
      ``(waveform in [−1, 1], subject envelope)`` per sample.
    """
    step_times = np.arange(arousal.size) * STEP_SECONDS
    sample_times = np.arange(num_samples) / sample_rate

    def per_sample(values: np.ndarray) -> np.ndarray:
        return np.interp(sample_times, step_times, values.astype(np.float64))

    subject, envelope = synthesize_voice(
        rng,
        per_sample(arousal),
        per_sample(valence),
        per_sample(subject_speaking),
        sample_rate,
        f0_base=200.0,
        voice_valence=voice_valence,
    )
    # The second speaker's prosody follows its own, unrelated emotion.
    other_arousal = latent_trajectory(rng, arousal.size)
    other_valence = latent_trajectory(rng, arousal.size)
    other, _ = synthesize_voice(
        rng,
        per_sample(other_arousal),
        per_sample(other_valence),
        per_sample(other_speaking),
        sample_rate,
        f0_base=110.0,
        formant_scale=0.85,
    )
    other = distant(rng, other, sample_rate)
    room = signal.lfilter([1.0], [1.0, -0.9], rng.standard_normal(num_samples))
    room /= np.std(room)
    mix = 0.08 * subject + 0.012 * other + 0.0015 * room
    return np.clip(mix, -1.0, 1.0), envelope


# ----------------------------------------------------------------------------------------------
# Video: the astronaut's face, warped by expression, moved, lit, composited on a room.

# The face region of skimage.data.astronaut() (x0, y0, x1, y1) and landmarks in that photo's pixels.
FACE_REGION = (132, 0, 322, 210)
LANDMARKS = {
    "mouth_left": (204, 145),
    "mouth_right": (245, 145),
    "lower_lip": (224, 153),
    "chin": (225, 172),
    "upper_lid_left": (200, 96),
    "upper_lid_right": (250, 98),
    "lower_lid_left": (200, 105),
    "lower_lid_right": (250, 107),
    "brow_left": (198, 87),
    "brow_right": (251, 88),
    "brow_inner_left": (213, 90),
    "brow_inner_right": (237, 91),
}
HEAD_CENTRE, HEAD_AXES = (227, 106), (74, 98)
# Expression controls → displacements (dx, dy) in pixels at landmarks, with a Gaussian radius.
EXPRESSION_BASES = {
    # Mouth corners up and out for positive valence, down for negative.
    "smile": [("mouth_left", (-2.0, -5.5), 8), ("mouth_right", (2.0, -5.5), 8)],
    "mouth_open": [("lower_lip", (0, 2.5), 7), ("chin", (0, 2.5), 12)],
    # Eyes open wider with arousal.
    "eyes_open": [
        ("upper_lid_left", (0, -2.0), 5),
        ("upper_lid_right", (0, -2.0), 5),
        ("lower_lid_left", (0, 0.8), 4),
        ("lower_lid_right", (0, 0.8), 4),
    ],
    "brows_raise": [("brow_left", (0, -3.0), 9), ("brow_right", (0, -3.0), 9)],
    # Inner brows pulled up and together (sadness) for negative valence.
    "brows_sad": [("brow_inner_left", (1.5, -2.5), 6), ("brow_inner_right", (-1.5, -2.5), 6)],
}


@functools.lru_cache(maxsize=1)
def _face_sprite() -> tuple[np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The face crop (RGB float32), its feathered alpha, and per-control displacement fields."""
    from skimage import data as skimage_data

    x0, y0, x1, y1 = FACE_REGION
    photo = skimage_data.astronaut()[y0:y1, x0:x1].astype(np.float32)
    height, width = photo.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    (cx, cy), (ax, ay) = HEAD_CENTRE, HEAD_AXES
    inside = ((xs + x0 - cx) / ax) ** 2 + ((ys + y0 - cy) / ay) ** 2
    alpha = np.clip((1.0 - inside) / 0.15, 0.0, 1.0).astype(np.float32)
    bases = {}
    for control, points in EXPRESSION_BASES.items():
        dx = np.zeros((height, width), np.float32)
        dy = np.zeros((height, width), np.float32)
        for landmark, (move_x, move_y), radius in points:
            px, py = LANDMARKS[landmark]
            weight = np.exp(-((xs + x0 - px) ** 2 + (ys + y0 - py) ** 2) / (2 * radius**2))
            dx += move_x * weight
            dy += move_y * weight
        bases[control] = (dx, dy)
    return photo, alpha, bases


def render_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """An office-like backdrop: a wall gradient, a window, a desk and a monitor (RGB float32)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    wall = rng.uniform(150, 200, 3).astype(np.float32)
    image = wall * (0.85 + 0.15 * (xs / width))[..., None]
    image = image * (1.0 - 0.1 * (ys / height))[..., None]
    window_x = int(rng.uniform(0.65, 0.75) * width)
    image[int(0.08 * height) : int(0.45 * height), window_x : window_x + int(0.22 * width)] = (
        rng.uniform(215, 245, 3)
    )
    desk_top = int(rng.uniform(0.78, 0.84) * height)
    image[desk_top:] = rng.uniform(70, 110, 3) * np.array([1.0, 0.8, 0.6])
    monitor_x = int(rng.uniform(0.03, 0.08) * width)
    monitor = (slice(desk_top - int(0.3 * height), desk_top - 4), slice(monitor_x, monitor_x + 70))
    image[monitor] = 40.0
    image[monitor[0].start + 4 : monitor[0].stop - 4, monitor_x + 4 : monitor_x + 66] = rng.uniform(
        60, 120, 3
    )
    texture = ndimage.gaussian_filter(rng.standard_normal((height, width)), 2.0)
    image += 6.0 * texture[..., None] / (texture.std() + 1e-6)
    return image.astype(np.float32)


def render_frame(
    background: np.ndarray,
    expression: dict[str, float],
    pose: tuple[float, float, float, float],
    lighting: tuple[float, float],
    face_visible: bool,
) -> np.ndarray:
    """One video frame (BGR uint8).

    Args:
      background: ``[H, W, 3]`` RGB float32.
      expression: Control name → strength (see ``EXPRESSION_BASES``).
      pose: (dx, dy) head translation in pixels, rotation in degrees, scale factor.
      lighting: (gain, left–right gradient).
      face_visible: False renders the background only (subject out of frame).
    """
    height, width = background.shape[:2]
    frame = background
    if face_visible:
        photo, alpha, bases = _face_sprite()
        sprite_height, sprite_width = alpha.shape
        ys, xs = np.mgrid[0:sprite_height, 0:sprite_width].astype(np.float32)
        map_x, map_y = xs.copy(), ys.copy()
        for control, strength in expression.items():
            dx, dy = bases[control]
            map_x -= strength * dx
            map_y -= strength * dy
        rgba = np.dstack([photo, alpha * 255.0])
        warped = cv2.remap(rgba, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        shift_x, shift_y, angle, scale = pose
        base_scale = 0.9 * height / 240.0
        matrix = cv2.getRotationMatrix2D(
            (sprite_width / 2, sprite_height / 2), angle, base_scale * scale
        )
        matrix[0, 2] += width / 2 + shift_x - sprite_width / 2
        matrix[1, 2] += 0.46 * height + shift_y - sprite_height / 2
        placed = cv2.warpAffine(warped, matrix, (width, height), flags=cv2.INTER_LINEAR)
        coverage = placed[..., 3:4] / 255.0
        frame = background * (1.0 - coverage) + placed[..., :3] * coverage
    gain, gradient = lighting
    ramp = 1.0 + gradient * (np.arange(width, dtype=np.float32) / width - 0.5)
    frame = frame * (gain * ramp)[None, :, None]
    return cv2.cvtColor(np.clip(frame, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


# ----------------------------------------------------------------------------------------------
# Writing one session and a whole corpus.


def _session_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, ("train", "dev", "test").index(split), index])


def generate_session(root: pathlib.Path, name: str, split: str, index: int, options) -> None:
    """Writes every file of one session under ``root`` (each one atomically)."""
    cv2.setNumThreads(1)
    rng = _session_rng(options.seed, split, index)
    seconds = options.test_seconds if split == "test" and options.test_seconds else options.seconds
    num_steps = int(round(seconds / STEP_SECONDS)) + 1
    arousal = latent_trajectory(rng, num_steps)
    valence = latent_trajectory(rng, num_steps)
    segment = hard_case_schedule(rng, num_steps)
    phrases = phrase_mask(rng, arousal)
    subject_speaking = phrases & np.isin(segment, (NORMAL, NO_FACE))
    other_speaking = phrase_mask(rng, np.zeros(num_steps)) & (segment == SECOND_SPEAKER)
    face_present = segment != NO_FACE

    # Audio.
    num_samples = int(round(seconds * options.sample_rate))
    waveform, envelope = render_audio(
        rng,
        arousal,
        valence,
        subject_speaking,
        other_speaking,
        num_samples,
        options.sample_rate,
        options.voice_valence,
    )
    samples_per_step = STEP_SECONDS * options.sample_rate
    step_of_sample = np.minimum(
        (np.arange(num_samples) / samples_per_step + 0.5).astype(int), num_steps - 1
    )
    voiced_share = np.bincount(step_of_sample, envelope > 0.05, num_steps) / np.maximum(
        np.bincount(step_of_sample, minlength=num_steps), 1
    )
    speech_active = voiced_share > 0.2
    _write_atomically(
        root / "recordings_audio" / f"{name}.wav",
        lambda path: soundfile.write(path, waveform, options.sample_rate, subtype="PCM_16"),
    )

    # Video: frame k shows time k / fps; controls are read from the step grid.
    num_frames = int(round(seconds * options.fps))
    frame_times = np.arange(num_frames) / options.fps
    background = render_background(rng, options.frame_width, options.frame_height)
    step_times = np.arange(num_steps) * STEP_SECONDS
    at_frames = lambda values: np.interp(frame_times, step_times, values)  # noqa: E731
    mouth_open = at_frames(ndimage.uniform_filter1d(speech_active.astype(float), 3))
    # The face carries mostly valence (smile, sad brows at full strength) and some arousal (eye
    # opening, brow raise and head-motion energy at a third of it); the voice the reverse.
    motion = 1.0 + 0.1 * arousal
    pose_x = at_frames(10.0 * motion * smooth_noise(rng, num_steps, 1.5 / STEP_SECONDS))
    pose_y = at_frames(6.0 * motion * smooth_noise(rng, num_steps, 1.5 / STEP_SECONDS))
    pose_angle = at_frames(4.0 * motion * smooth_noise(rng, num_steps, 2.0 / STEP_SECONDS))
    pose_scale = at_frames(1.0 + 0.05 * smooth_noise(rng, num_steps, 4.0 / STEP_SECONDS))
    gain = at_frames(1.0 + 0.12 * smooth_noise(rng, num_steps, 5.0 / STEP_SECONDS))
    gradient = at_frames(0.25 * smooth_noise(rng, num_steps, 6.0 / STEP_SECONDS))
    frame_arousal, frame_valence = at_frames(arousal), at_frames(valence)
    frame_face = np.interp(frame_times, step_times, face_present.astype(float)) > 0.5

    def write_video(path: str) -> None:
        writer = cv2.VideoWriter(
            path,
            cv2.VideoWriter_fourcc(*"mp4v"),
            options.fps,
            (options.frame_width, options.frame_height),
        )
        if not writer.isOpened():
            raise CorpusError(f"{path}: OpenCV cannot open an mp4v video writer")
        try:
            for k in range(num_frames):
                expression = {
                    # The photo already smiles: frowning needs the larger displacement.
                    "smile": frame_valence[k] * (1.0 if frame_valence[k] > 0 else 1.6),
                    "brows_sad": max(-frame_valence[k], 0.0),
                    "eyes_open": 0.35 * frame_arousal[k],
                    "brows_raise": 0.25 * frame_arousal[k],
                    "mouth_open": mouth_open[k],
                }
                pose = (pose_x[k], pose_y[k], pose_angle[k], pose_scale[k])
                writer.write(
                    render_frame(
                        background, expression, pose, (gain[k], gradient[k]), frame_face[k]
                    )
                )
        finally:
            writer.release()

    _write_atomically(root / "recordings_video" / f"{name}.mp4", write_video)
    frame_rows = "".join(f"{k};{t:.3f}\n" for k, t in enumerate(frame_times))
    arff_io.write_text_atomically(
        root / "recordings_video_frame_time" / f"{name}.csv", "frame;time\n" + frame_rows
    )

    # Labels: six raters averaged. The test split's go to HIDDEN_DIR, not to the release's
    # ratings_gold_standard/ (as in the official release, which has none for test).
    gold = {}
    label_root = root / (HIDDEN_DIR if split == "test" else "ratings_gold_standard")
    for dimension, latent in (("arousal", arousal), ("valence", valence)):
        gold[dimension] = rate(rng, latent, options.num_raters).mean(axis=0)
        arff_io.write_gold_standard(
            label_root / dimension / f"{name}.arff", name, step_times, gold[dimension]
        )

    ground_truth = dict(
        times=step_times,
        arousal=arousal.astype(np.float32),
        valence=valence.astype(np.float32),
        gold_arousal=gold["arousal"].astype(np.float32),
        gold_valence=gold["valence"].astype(np.float32),
        face_present=face_present,
        speech_active=speech_active,
        other_speaker_active=other_speaking,
        segment=segment,
        segment_names=np.array(SEGMENT_NAMES),
    )
    truth_root = root / HIDDEN_DIR if split == "test" else root
    _write_atomically(
        truth_root / "ground_truth" / f"{name}.npz",
        lambda path: np.savez_compressed(path, **ground_truth),
    )


def hidden_test_labels(root: str | os.PathLike, name: str, step_seconds: float = STEP_SECONDS):
    """The hidden gold standard of test session `name` (``avemo.evaluate --split test`` only).

    Returns:
      ``Labels`` on the step grid, or None when `root` holds no hidden labels for `name`.
    """
    folder = pathlib.Path(root) / HIDDEN_DIR
    paths = [folder / dimension / f"{name}.arff" for dimension in ("arousal", "valence")]
    if not all(path.is_file() for path in paths):
        return None
    return arff_io.read_label_pair(*paths, step_seconds=step_seconds)


def _write_atomically(path: pathlib.Path, write) -> None:
    """Calls ``write(temporary_path)`` (same suffix, same folder), then renames into ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix
    )
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


def is_generated(root: str | os.PathLike, options: SyntheticOptions) -> bool:
    """True when ``root`` holds a complete corpus generated with exactly these options."""
    marker = pathlib.Path(root) / MARKER_NAME
    try:
        return json.loads(marker.read_text())["fingerprint"] == options.fingerprint()
    except (OSError, ValueError, KeyError):
        return False


def generate(
    root: str | os.PathLike, options: SyntheticOptions, workers: int = 1, progress: bool = True
) -> pathlib.Path:
    """Generates the corpus under ``root`` unless it is already there; returns ``root``.

    The marker file ``corpus.json`` is written last, so an interrupted run is redone.
    """
    root = pathlib.Path(root)
    if is_generated(root, options):
        return root
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER_NAME).unlink(missing_ok=True)
    sessions = options.session_names()
    started = time.time()
    if workers > 1 and len(sessions) > 1:
        context = multiprocessing.get_context("spawn")  # Safe if JAX is already imported.
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [
                pool.submit(generate_session, root, name, split, index, options)
                for name, split, index in sessions
            ]
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                future.result()
                _report(progress, done, len(sessions), started)
    else:
        for done, (name, split, index) in enumerate(sessions, 1):
            generate_session(root, name, split, index, options)
            _report(progress, done, len(sessions), started)
    marker = {
        "generator_version": GENERATOR_VERSION,
        "fingerprint": options.fingerprint(),
        "options": dataclasses.asdict(options),
        "sessions": [name for name, _, _ in sessions],
    }
    arff_io.write_text_atomically(root / MARKER_NAME, json.dumps(marker, indent=2) + "\n")
    return root


def _report(progress: bool, done: int, total: int, started: float) -> None:
    if progress:
        print(
            f"synthetic corpus: {done}/{total} sessions ({time.time() - started:.0f} s)",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="corpus root to write (AVEC2016 layout)")
    parser.add_argument("--size", default="default", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    options = SyntheticOptions.of_size(args.size, args.seed)
    started = time.time()
    generate(args.out, options, workers=args.workers)
    print(
        f"wrote {len(options.session_names())} sessions to {args.out} in "
        f"{time.time() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
