"""Figures of predictions over time (arousal/valence, audio gate β, modality flags) as PNG bytes.

Used by `avemo.evaluate` (prediction vs gold per dev session) and `avemo.predict` (new recordings);
rendered with matplotlib's Agg backend into memory so that callers can write files atomically.
"""

from __future__ import annotations

import io
import os
import pathlib
import tempfile

import numpy as np

from avemo.metrics import DIMENSIONS


def write_atomically(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it into place."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def curves_png(
    title: str,
    times: np.ndarray,
    predictions: np.ndarray,
    audio_gate: np.ndarray | None,
    face_present: np.ndarray,
    speech_energy: np.ndarray,
    gold: np.ndarray | None = None,
) -> bytes:
    """PNG: one panel per dimension (prediction, gold if given), then β with the modality flags."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7), dpi=90)
    axes = fig.subplots(len(DIMENSIONS) + 1, 1, sharex=True)
    for d, dim in enumerate(DIMENSIONS):
        ax = axes[d]
        ax.plot(times, predictions[:, d], lw=1.0, label="prediction")
        if gold is not None:
            ax.plot(times, gold[:, d], lw=1.0, color="k", alpha=0.7, label="gold standard")
        ax.set_ylabel(dim)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    ax = axes[-1]
    ax.fill_between(
        times, 0, face_present, step="mid", color="tab:green", alpha=0.2, label="face present"
    )
    ax.plot(times, speech_energy, lw=0.8, color="tab:orange", label="speech energy m")
    if audio_gate is not None:
        ax.plot(times, audio_gate, lw=1.2, color="tab:purple", label="audio gate β")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("gate / flags")
    ax.set_xlabel("time (s)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, ncol=3)
    fig.suptitle(title)
    # Fixed margins for this figure size (tight_layout costs a second full draw) and a fast PNG
    # compression level: reports draw one figure per session and member, so this is their cost.
    fig.subplots_adjust(left=0.07, right=0.985, top=0.93, bottom=0.075, hspace=0.1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def write_curves_png(path: str | os.PathLike, *args, **kwargs) -> None:
    """`curves_png(*args, **kwargs)` written atomically to `path` (a picklable task for a pool)."""
    write_atomically(path, curves_png(*args, **kwargs))
