"""Clean stops: Ctrl-C, or the SIGTERM a scheduler sends before it kills a job.

A long loop asks :func:`stop_requests` to catch the first signal and only
raise a flag; the loop finishes the item in hand (an image's atomic writes, a
training step), records where it stopped, and raises :class:`Interrupted`
with a message saying what was kept and how to resume. A second signal stops
at once (the item in hand is then dropped: its temporary file is cleared on
the next run).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped on request after saving its state; str() says how to resume."""


class StopFlag:
    """Set by the first SIGINT or SIGTERM inside :func:`stop_requests`."""

    def __init__(self) -> None:
        self.requested = False


@contextmanager
def stop_requests() -> Iterator[StopFlag]:
    """Within the block the first signal sets the flag; the next raises KeyboardInterrupt.

    Signal handlers can only be set from the main thread; elsewhere the flag
    never rises and a signal behaves as Python's default.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def request_stop(signum: int, frame: object) -> None:
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    previous = {sig: signal.signal(sig, request_stop) for sig in _SIGNALS}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
