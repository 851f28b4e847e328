"""Z-normalisation of the audio features, Eq. (9): fitted on training sessions only.

The preparation cache stores raw features; `fit_training` computes μ and σ from the training
sessions, `save`/`load` keep them next to the model, `apply` runs at train, eval and predict time.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# A column whose σ is below this is constant on the training data: it is centred, not scaled.
_MIN_STD = 1e-8


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """μ and σ of Eq. (9), per feature column."""

    mean: np.ndarray  # [D] float64
    std: np.ndarray  # [D] float64, > 0
    names: tuple[str, ...]  # [D] column names (empty when unknown)
    num_rows: int  # training rows the statistics came from


def fit(arrays: Iterable[np.ndarray], names: Sequence[str] = ()) -> Normalizer:
    """μ and σ (population) over the rows of all arrays, Eq. (9).

    σ below 1e-8 (a constant column) is replaced by 1, so such a column becomes 0, not NaN.
    """
    total = None
    squares = None
    rows = 0
    offset = None
    for array in arrays:
        array = np.asarray(array, np.float64)
        if array.ndim != 2:
            raise ValueError(f"feature arrays must be [T, D], got {array.shape}")
        if offset is None:
            offset = array.mean(axis=0) if array.shape[0] else np.zeros(array.shape[1])
            total = np.zeros(array.shape[1])
            squares = np.zeros(array.shape[1])
        if array.shape[1] != offset.shape[0]:
            raise ValueError(f"feature widths differ: {array.shape[1]} vs {offset.shape[0]}")
        if not np.isfinite(array).all():
            raise ValueError("feature arrays contain NaN or infinite values")
        centred = array - offset  # Shifted sums keep the variance accurate.
        total += centred.sum(axis=0)
        squares += np.square(centred).sum(axis=0)
        rows += array.shape[0]
    if rows == 0:
        raise ValueError("no training rows to fit the normalisation on")
    shifted_mean = total / rows
    variance = np.maximum(squares / rows - np.square(shifted_mean), 0.0)
    std = np.sqrt(variance)
    std = np.where(std < _MIN_STD, 1.0, std)
    names = tuple(str(n) for n in names)
    if names and len(names) != offset.shape[0]:
        raise ValueError(f"{len(names)} names for {offset.shape[0]} columns")
    return Normalizer(mean=offset + shifted_mean, std=std, names=names, num_rows=rows)


def fit_training(
    features_by_session: Mapping[str, np.ndarray],
    split_by_session: Mapping[str, str],
    names: Sequence[str] = (),
) -> Normalizer:
    """Eq. (9) statistics from the sessions whose split is "train" only (dev/test never leak).

    Args:
      features_by_session: session name → [T, D] raw features.
      split_by_session: session name → "train" / "dev" / "test".
      names: column names.

    Raises:
      ValueError: no training session, or a session without a split.
    """
    missing = sorted(set(features_by_session) - set(split_by_session))
    if missing:
        raise ValueError(f"sessions without a split: {missing}")
    training = [f for s, f in features_by_session.items() if split_by_session[s] == "train"]
    if not training:
        raise ValueError("no training session: normalisation must be fitted on training data")
    return fit(training, names)


def apply(features: np.ndarray, normalizer: Normalizer, names: Sequence[str] = ()) -> np.ndarray:
    """(X - μ) / σ, Eq. (9), as float32. Checks column names when both sides have them."""
    features = np.asarray(features)
    if features.shape[-1] != normalizer.mean.shape[0]:
        raise ValueError(
            f"features have {features.shape[-1]} columns, normaliser {normalizer.mean.shape[0]}"
        )
    if len(names) and normalizer.names and tuple(str(n) for n in names) != normalizer.names:
        raise ValueError("feature columns differ from those the normaliser was fitted on")
    return ((features - normalizer.mean) / normalizer.std).astype(np.float32)


def save(path: str | os.PathLike, normalizer: Normalizer) -> None:
    """Writes the statistics to `path` (.npz) atomically: a temporary file, then os.replace."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as f:
            np.savez(
                f,
                mean=normalizer.mean,
                std=normalizer.std,
                names=np.asarray(normalizer.names, dtype=str),
                num_rows=np.int64(normalizer.num_rows),
            )
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def load(path: str | os.PathLike) -> Normalizer:
    """Reads statistics written by `save`."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        mean = data["mean"].astype(np.float64)
        std = data["std"].astype(np.float64)
        names = tuple(str(n) for n in data["names"])
        num_rows = int(data["num_rows"])
    if mean.shape != std.shape or mean.ndim != 1 or (std <= 0).any():
        raise ValueError(f"{os.fspath(path)}: not valid normalisation statistics")
    return Normalizer(mean=mean, std=std, names=names, num_rows=num_rows)
