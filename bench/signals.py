"""Ctrl-C and SIGTERM end the harness's commands the same way: cleanly, through `finally`."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; str() names the signal.

    A KeyboardInterrupt, so code that handles Ctrl-C handles SIGTERM too, and an
    `except Exception` around a step never swallows it.
    """


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM raise Interrupted; the old handlers come back."""
    def _raise(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, _raise) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
