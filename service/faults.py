"""Fault injection for the fault tests: ``debug.crash_at`` exits the process at a checkpoint step.

The service wires these wrappers around its changelog writer, its sink and its commit when
the setting is set, and the real parts otherwise; no production path checks a flag. The
process exits with `CRASH_EXIT_STATUS` at once (``os._exit``, as a kill would: nothing is
flushed or closed), at the first checkpoint that has states to write:

- ``mid_changelog``: half of the first changelog records sent, and acknowledged;
- ``after_flush``: the forecast producer flushed while changelog records are on their way;
- ``after_changelog``: the changelog acknowledged its records, their offsets not committed;
- ``after_commit``: the offsets of acknowledged records committed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Literal

from service.delivery import DeadLetterEvent
from service.offsets import Commit
from service.transport import Sink, StateWriter

__all__ = ["CRASH_EXIT_STATUS", "CrashPoint", "Crashes"]

log = logging.getLogger(__name__)

#: Exit status of a process stopped by ``debug.crash_at``.
CRASH_EXIT_STATUS = 70

CrashPoint = Literal["after_flush", "mid_changelog", "after_changelog", "after_commit"]


class Crashes:
    """Wraps the parts of a checkpoint so that the process exits at `point`."""

    def __init__(self, point: CrashPoint) -> None:
        self.point = point
        self.unflushed = False  # changelog records sent, not yet acknowledged
        self.uncommitted = False  # changelog records acknowledged, their offsets not committed

    def exit_at(self, point: CrashPoint) -> None:
        """Exit now if `point` is the one asked for."""
        if point != self.point:
            return
        log.error("fault injection: exiting at checkpoint point=%s", point)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):  # exit whatever the handler does
                handler.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(CRASH_EXIT_STATUS)

    def sink(self, sink: Sink) -> Sink:
        """`sink`, exiting ``after_flush``."""
        return _Sink(sink, self)

    def changelog(self, writer: StateWriter) -> StateWriter:
        """`writer`, exiting ``mid_changelog`` and ``after_changelog``."""
        return _Changelog(writer, self)

    def commit(self, commit: Commit) -> Commit:
        """`commit`, exiting ``after_commit``."""

        def committing(offsets: Mapping[int, int], timeout: float) -> None:
            commit(offsets, timeout)
            if self.uncommitted:
                self.uncommitted = False
                self.exit_at("after_commit")

        return committing


class _Sink:
    def __init__(self, sink: Sink, crashes: Crashes) -> None:
        self._sink = sink
        self._crashes = crashes

    def send_forecasts(
        self,
        stream_ids: Sequence[str],
        values: Sequence[bytes],
        partitions: Sequence[int] | None = None,
    ) -> None:
        self._sink.send_forecasts(stream_ids, values, partitions)

    def send_shadows(
        self,
        stream_ids: Sequence[str],
        values: Sequence[bytes],
        partitions: Sequence[int] | None = None,
    ) -> None:
        self._sink.send_shadows(stream_ids, values, partitions)

    def send_dead_letter(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        self._sink.send_dead_letter(key, value, headers)

    def take_dead_letter_events(self) -> list[DeadLetterEvent]:
        return self._sink.take_dead_letter_events()

    def deliver(self, timeout: float) -> None:
        self._sink.deliver(timeout)

    def flush(self, timeout: float) -> None:
        self._sink.flush(timeout)
        if self._crashes.unflushed:
            self._crashes.exit_at("after_flush")

    def close(self, timeout: float = 5.0) -> None:
        self._sink.close(timeout)


class _Changelog:
    def __init__(self, writer: StateWriter, crashes: Crashes) -> None:
        self._writer = writer
        self._crashes = crashes
        self.topic = writer.topic

    def send(
        self, partitions: Sequence[int], keys: Sequence[str], values: Sequence[bytes | None]
    ) -> int:
        crashes = self._crashes
        if keys and crashes.point == "mid_changelog":
            half = max(1, len(keys) // 2)
            self._writer.send(partitions[:half], keys[:half], values[:half])
            self._writer.flush(5.0)
            crashes.exit_at("mid_changelog")
        size = self._writer.send(partitions, keys, values)
        crashes.unflushed = crashes.unflushed or bool(keys)
        return size

    def flush(self, timeout: float) -> None:
        self._writer.flush(timeout)
        crashes = self._crashes
        if crashes.unflushed:
            crashes.unflushed = False
            crashes.uncommitted = True
            crashes.exit_at("after_changelog")

    def close(self, timeout: float = 5.0) -> None:
        self._writer.close(timeout)
