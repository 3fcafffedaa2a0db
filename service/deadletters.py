"""Records the service does not turn into forecasts: dead-lettered, counted and logged.

A rejected record (malformed, invalid, out of range...) is copied to the dead-letter topic
with its reason and source position in headers, cut to ``kafka.dead_letter_max_bytes``
when larger, and counted. A reading dropped because its stream already holds it, or holds a
later one, is logged one line per reason when due (`DropLog`), and, with
``kafka.dead_letter_late``, the late and duplicate ones are dead-lettered too. Dead letters
the broker refuses for good (sent smaller, then given up by `service.delivery`) are counted
and logged here once per loop iteration.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from service.codec import (
    HEADER_REASON,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    RawRecord,
    dead_letter_headers,
    fit_dead_letter,
)
from service.config import KafkaSettings, LogSettings
from service.core.readings import DropReason, ReadingBatch, Reject
from service.core.state import StateStore
from service.droplog import DropLog
from service.metrics import ServiceMetrics
from service.transport import Sink

__all__ = ["DeadLetters"]

log = logging.getLogger(__name__)


class DeadLetters:
    """Sends rejected (and, when asked, late) records to the dead-letter topic."""

    def __init__(
        self,
        kafka: KafkaSettings,
        logs: LogSettings,
        *,
        sink: Sink,
        store: StateStore,
        metrics: ServiceMetrics,
    ) -> None:
        self._max_bytes = kafka.dead_letter_max_bytes
        self._copy_late = kafka.dead_letter_late
        self._sink = sink
        self._store = store
        self._metrics = metrics
        self._drop_log = DropLog(logs.drop_interval)

    def rejected(self, rejects: list[Reject], records: Sequence[RawRecord]) -> None:
        """Dead-letter the records of `rejects` (positions in `records`), counted by reason."""
        by_position = {(r.partition, r.offset): r for r in records}
        for reject in rejects:
            record = by_position[(reject.partition, reject.offset)]
            self._metrics.rejects.labels(reason=str(reject.reason)).inc()
            self.send(record, str(reject.reason), reject.detail)

    def send(self, record: RawRecord, reason: str, detail: str) -> None:
        """Copy `record` to the dead-letter topic (cut to ``kafka.dead_letter_max_bytes``
        when it is larger), with a log line; the sink never raises for the record itself."""
        letter = fit_dead_letter(
            record.key,
            record.value,
            dead_letter_headers(reason, detail, record.topic, record.partition, record.offset),
            self._max_bytes,
        )
        self._sink.send_dead_letter(letter.key, letter.value, letter.headers)
        self._metrics.dead_letters.inc()
        if letter.truncated:
            self._metrics.dead_letter_truncations.inc()
        log.warning(
            "dead letter reason=%s topic=%s partition=%d offset=%d bytes=%d%s detail=%s",
            reason,
            record.topic,
            record.partition,
            record.offset,
            len(record.key or b"") + len(record.value or b""),
            " truncated" if letter.truncated else "",
            detail,
        )

    def refused(self) -> None:
        """Count and log the dead letters the broker refused for good since the last call."""
        for event in self._sink.take_dead_letter_events():
            where = {name: value.decode("utf-8", "replace") for name, value in event.headers}
            if event.outcome == "shrunk":
                counter, level = self._metrics.dead_letter_truncations, logging.WARNING
                what = "dead letter refused, sending it truncated"
            else:
                counter, level = self._metrics.dead_letter_failures, logging.ERROR
                what = "dead letter lost: refused even without its value"
            counter.inc()
            log.log(
                level,
                "%s reason=%s partition=%s offset=%s error=%s",
                what,
                where.get(HEADER_REASON, "?"),
                where.get(HEADER_SOURCE_PARTITION, "?"),
                where.get(HEADER_SOURCE_OFFSET, "?"),
                event.error,
            )

    def dropped(
        self,
        batch: ReadingBatch,
        drops: list[tuple[int, DropReason]],
        records: Sequence[RawRecord],
    ) -> None:
        """Log dropped readings (rows of `batch`), one line per reason when due, and, with
        ``kafka.dead_letter_late``, copy the late and duplicate ones to the dead-letter topic."""
        rows_of: dict[DropReason, list[int]] = {}
        for row, reason in drops:
            rows_of.setdefault(reason, []).append(row)
        copy_late = self._copy_late
        by_position = {(r.partition, r.offset): r for r in records} if copy_late else {}
        for reason, rows in rows_of.items():
            if copy_late and reason is not DropReason.ALREADY_APPLIED:
                for row in rows:
                    record = by_position[(int(batch.partitions[row]), int(batch.offsets[row]))]
                    self.send(record, str(reason), self._detail(batch, row, reason))
            if self._drop_log.due(reason, len(rows)):
                row = rows[0]
                self._drop_log.log(
                    reason,
                    batch.stream_ids[row],
                    int(batch.partitions[row]),
                    int(batch.offsets[row]),
                    self._detail(batch, row, reason),
                )

    def _detail(self, batch: ReadingBatch, row: int, reason: DropReason) -> str:
        """Why `row` of `batch` was dropped, against its stream's state now."""
        if reason is DropReason.ALREADY_APPLIED:
            return f"offset {int(batch.offsets[row])} is already in the stream's state"
        info = self._store.info(batch.stream_ids[row])
        last_ts = info.last_ts if info is not None else float("nan")
        return f"ts {float(batch.ts[row]):.3f} is not after the stream's last applied {last_ts:.3f}"
