"""Log lines about dropped readings, at most one per reason per interval.

A dropped reading (late, duplicate, already applied) is counted in ``sensorcast_drops_total``;
it also gets a log line, but a stream replaying old readings or a producer resending a
batch drops thousands at once, so each reason logs at most one line per interval, naming
one stream, partition and offset and counting the drops since its last line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from service.core.readings import DropReason

__all__ = ["DropLog"]

log = logging.getLogger("service.drops")


class DropLog:
    """Rate-limited drop lines: `due` counts drops and says whether their reason may log
    now; `log` writes the line, with the drops counted since the last one."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next: dict[DropReason, float] = {}
        self._since: dict[DropReason, int] = {}

    def due(self, reason: DropReason, n: int = 1) -> bool:
        """Count `n` drops of `reason`; whether a line about it may be logged now."""
        self._since[reason] = self._since.get(reason, 0) + n
        return self._clock() >= self._next.get(reason, float("-inf"))

    def log(
        self, reason: DropReason, stream_id: str, partition: int, offset: int, detail: str
    ) -> None:
        """Log one of the drops counted by `due`, with how many there were since the last line."""
        dropped = self._since.pop(reason, 0)
        self._next[reason] = self._clock() + self.interval
        level = logging.INFO if reason is DropReason.ALREADY_APPLIED else logging.WARNING
        log.log(
            level,
            "readings dropped reason=%s stream=%s partition=%d offset=%d detail=%s "
            "dropped_since_last_line=%d",
            reason,
            stream_id,
            partition,
            offset,
            detail,
            dropped,
        )
