"""The one exception type for bad input files.

Every problem with a user-supplied file (class spec, image, label, list) is
raised as :class:`InputError` so the CLI can print a single line naming the
file and the problem instead of a deep library traceback.
"""

from __future__ import annotations

from os import PathLike


class InputError(Exception):
    """A user-supplied file is missing, unreadable or malformed."""

    def __init__(self, path: str | PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(self.path, reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"
