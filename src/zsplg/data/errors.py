"""The one exception type for bad input files.

Every problem with a user-supplied file (class spec, image, label, list) is
raised as :class:`InputError` so the CLI can print a single line naming the
file and the problem instead of a deep library traceback.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path


class InputError(Exception):
    """A user-supplied file is missing, unreadable or malformed."""

    def __init__(self, path: str | PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(self.path, reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def read_text_input(path: Path, what: str) -> str:
    """A user's UTF-8 text file (class spec, pair-list), or one InputError saying why not."""
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "not a file")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read {what}: {exc}") from None
