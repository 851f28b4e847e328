"""The exception and warning of the video front end for unusable input (raw files → front end)."""

from __future__ import annotations

import os


class VideoError(ValueError):
    """A video or frame-time file that cannot be used; the message names the file and problem."""

    def __init__(self, source: str | os.PathLike[str], problem: str):
        self.source = os.fspath(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class VideoWarning(UserWarning):
    """A usable video with a defined but noteworthy result (padded tail, no face, odd times)."""
