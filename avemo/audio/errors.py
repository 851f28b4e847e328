"""The one exception the audio front end raises for unusable input (raw files → front end)."""

from __future__ import annotations


class AudioError(ValueError):
    """Audio that cannot be used: the message names the file and what is wrong with it."""

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")
