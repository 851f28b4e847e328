"""Audio front end: raw audio (or a video's audio track) → features on the 40 ms label grid.

Data flow: `io` (load, 16 kHz mono 16-bit) → `dsp` (Eq. 1–6, endpoints, speech energy) →
`features` / `spectrogram` → `frontend.extract`; `normalize` (Eq. 9) is applied later, by the
pipeline, with statistics fitted on training sessions only.
"""

from avemo.audio.errors import AudioError

__all__ = ["AudioError"]
