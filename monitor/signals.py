"""Stopping on SIGTERM as on Ctrl-C: a command winds down, flushes and exits 0 on either."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
    """Raised in the main thread by SIGTERM or SIGINT inside ``stop_on_signals(raise_=True)``."""


@contextmanager
def stop_on_signals(*, raise_: bool = False) -> Iterator[list[int]]:
    """Note SIGTERM and SIGINT in the returned list while the block runs (the previous handlers come back after).

    A server that installs its own handlers meanwhile and, on leaving, restores these and raises the signal
    again (uvicorn does, so that the process dies by it) now only adds to the list: the caller goes on to flush
    and exit 0. With ``raise_`` a signal also raises ``StopRequested`` where the main thread is, e.g. in a wait.
    """
    seen: list[int] = []

    def note(sig: int, frame: FrameType | None) -> None:
        seen.append(sig)
        if raise_:
            raise StopRequested(signal.Signals(sig).name)

    previous = {sig: signal.signal(sig, note) for sig in STOP_SIGNALS}
    try:
        yield seen
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
