"""Ctrl-C for the long-running tools: stop at the next safe point, not wherever it lands."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["stop_on_signals"]


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop`; a second one raises KeyboardInterrupt to hurry up.

    A KeyboardInterrupt raised inside a Kafka client's poll can leave its locks or
    connections half-way, and closing it then may hang; with `stop`, the loop finishes its
    poll and closes the client normally."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
