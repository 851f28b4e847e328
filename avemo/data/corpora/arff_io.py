"""Reads and writes AVEC2016 gold-standard ARFF files (one dimension per file, 40 ms rows).

Format: ``@relation GOLDSTANDARD``; attributes ``Instance_name`` (string), ``frameTime``
(numeric), ``GoldStandard`` (numeric); rows like ``dev_1,0.04,-0.022925``. Parsing and writing go
through liac-arff (``import arff``); writes are atomic (temporary name, then ``os.replace``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile

import arff
import numpy as np

from avemo.data.corpora.base import CorpusError, Labels

RELATION = "GOLDSTANDARD"
ATTRIBUTES = ("Instance_name", "frameTime", "GoldStandard")
# Decimal places written for times and values (the official files use six).
DECIMALS = 6


@dataclasses.dataclass(frozen=True)
class GoldStandard:
    """One parsed ARFF file, before any grid check.

    Attributes:
      path: The file.
      instance_names: ``[T]`` the ``Instance_name`` column.
      times: ``[T] float64`` the ``frameTime`` column (NaN where missing).
      values: ``[T] float64`` the ``GoldStandard`` column (NaN where missing).
      warnings: Harmless header quirks that were tolerated.
    """

    path: pathlib.Path
    instance_names: tuple[str, ...]
    times: np.ndarray
    values: np.ndarray
    warnings: tuple[str, ...]


def read_gold_standard(path: str | os.PathLike) -> GoldStandard:
    """Parses one gold-standard ARFF file.

    Header quirks that do not change the meaning (attribute names with surrounding spaces or another
    case, another relation name) are tolerated and reported in ``warnings``.

    Raises:
      CorpusError: naming the file, when it is missing, not ARFF, or lacks a needed attribute.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise CorpusError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        parsed = arff.loads(text)
    except Exception as error:  # liac-arff raises several unrelated exception types.
        raise CorpusError(
            f"{path}: not a valid ARFF file ({type(error).__name__}: {error})"
        ) from None

    warnings = []
    relation = str(parsed.get("relation", ""))
    if relation.strip() != RELATION:
        warnings.append(f"relation is {relation!r}, expected {RELATION!r}")
    names = [str(name) for name, _ in parsed["attributes"]]
    normalised = [name.strip().lower() for name in names]
    columns = {}
    for wanted in ATTRIBUTES:
        if wanted.lower() not in normalised:
            raise CorpusError(f"{path}: no attribute {wanted!r} (attributes are {names})")
        index = normalised.index(wanted.lower())
        if names[index] != wanted:
            warnings.append(f"attribute {names[index]!r} read as {wanted!r}")
        columns[wanted] = index

    rows = parsed["data"]
    try:
        instance_names = tuple(str(row[columns["Instance_name"]]) for row in rows)
        times = np.array([_number(row[columns["frameTime"]]) for row in rows], dtype=np.float64)
        values = np.array([_number(row[columns["GoldStandard"]]) for row in rows], dtype=np.float64)
    except (TypeError, ValueError, IndexError) as error:
        raise CorpusError(f"{path}: malformed data row ({error})") from None
    return GoldStandard(path, instance_names, times, values, tuple(warnings))


def _number(value: object) -> float:
    return float("nan") if value is None else float(value)


def grid_problems(times: np.ndarray, step_seconds: float) -> list[str]:
    """Lists what is wrong with a time column that should read 0, step, 2·step, … (empty: fine)."""
    problems = []
    if times.size == 0:
        return ["no data rows"]
    if not np.all(np.isfinite(times)):
        problems.append(f"{int(np.sum(~np.isfinite(times)))} missing or NaN times")
        return problems
    if abs(times[0]) > 1e-6:
        problems.append(f"first time is {times[0]:g} s, expected 0")
    steps = np.diff(times)
    if np.any(steps <= 0):
        first = int(np.argmax(steps <= 0)) + 1
        problems.append(f"times are not increasing (row {first + 1}: {times[first]:g} s)")
    elif steps.size and np.max(np.abs(steps - step_seconds)) > 1e-4:
        bad = int(np.argmax(np.abs(steps - step_seconds) > 1e-4))
        problems.append(
            f"time step is not {step_seconds:g} s "
            f"(row {bad + 2}: {steps[bad]:g} s after the previous)"
        )
    return problems


def read_label_pair(
    arousal_path: str | os.PathLike,
    valence_path: str | os.PathLike,
    step_seconds: float = 0.04,
) -> Labels:
    """Reads an arousal and a valence ARFF file into ``Labels`` on the step grid.

    Raises:
      CorpusError: naming the file, on a missing file, NaN values, a broken time grid, or row counts
        that differ between the two dimensions.
    """
    arousal = read_gold_standard(arousal_path)
    valence = read_gold_standard(valence_path)
    for gold in (arousal, valence):
        problems = grid_problems(gold.times, step_seconds)
        if np.any(~np.isfinite(gold.values)):
            problems.append(f"{int(np.sum(~np.isfinite(gold.values)))} missing or NaN values")
        if problems:
            raise CorpusError(f"{gold.path}: " + "; ".join(problems))
    if arousal.times.size != valence.times.size:
        raise CorpusError(
            f"{arousal.path} has {arousal.times.size} rows but {valence.path} has "
            f"{valence.times.size}"
        )
    values = np.stack([arousal.values, valence.values], axis=1).astype(np.float32)
    times = np.arange(arousal.times.size, dtype=np.float64) * step_seconds
    return Labels(times, values)


def write_gold_standard(
    path: str | os.PathLike, instance_name: str, times: np.ndarray, values: np.ndarray
) -> None:
    """Writes one dimension's gold standard in the AVEC2016 ARFF format, atomically."""
    times = np.round(np.asarray(times, dtype=np.float64), DECIMALS)
    values = np.round(np.asarray(values, dtype=np.float64), DECIMALS)
    document = {
        "relation": RELATION,
        "attributes": [
            ("Instance_name", "STRING"),
            ("frameTime", "NUMERIC"),
            ("GoldStandard", "NUMERIC"),
        ],
        "data": [[instance_name, float(t), float(v)] for t, v in zip(times, values)],
    }
    write_text_atomically(path, arff.dumps(document) + "\n")


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to a temporary file beside ``path``, then renames it into place."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise
