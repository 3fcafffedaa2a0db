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
    """Rate-limited drop lines: `due` says whether a reason may log now; `log` writes the
    line (with the drops `count`-ed since the last), `count` only counts."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next: dict[DropReason, float] = {}
        self._since: dict[DropReason, int] = {}

    def due(self, reason: DropReason) -> bool:
        """Whether a line about `reason` may be logged now."""
        return self._clock() >= self._next.get(reason, float("-inf"))

    def count(self, reason: DropReason) -> None:
        """Count a drop of `reason` for the next line, without logging."""
        self._since[reason] = self._since.get(reason, 0) + 1

    def log(
        self, reason: DropReason, stream_id: str, partition: int, offset: int, detail: str
    ) -> None:
        """Log this drop if the reason's line is due (else only count it)."""
        if not self.due(reason):
            self.count(reason)
            return
        others = self._since.pop(reason, 0)
        self._next[reason] = self._clock() + self.interval
        level = logging.INFO if reason is DropReason.ALREADY_APPLIED else logging.WARNING
        log.log(
            level,
            "reading dropped reason=%s stream=%s partition=%d offset=%d detail=%s "
            "dropped_since_last_line=%d",
            reason,
            stream_id,
            partition,
            offset,
            detail,
            others,
        )
