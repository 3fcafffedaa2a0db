"""At-least-once delivery of forecasts and dead letters, above the Kafka clients.

Each client library has its own way to queue a record and to learn that a delivery failed
(kafka-python: futures and errbacks on its I/O thread; confluent-kafka: delivery reports
served by ``poll``/``flush`` on the calling thread). `DeliveringSink` holds what is the same
for both, written once: a record that could not be queued or whose delivery failed is kept
and sent again by `flush`, which returns only when everything sent so far is acknowledged,
so the checkpoint can commit input offsets after it without losing a forecast. A dead letter
that the client or the broker refuses for good is sent smaller, then given up (see
`DeadLetterEvents`); it never fails a checkpoint, so no single record can stop the
service. The adapters (`service.kafka.sink.KafkaSink`,
`service.kafka.confluent.sink.ConfluentSink`) implement `_produce`, `_deliver` and
`_retriable` and report failed deliveries with `_delivery_failed`.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from service.codec import DeadLetter, shrink_dead_letter
from service.config import KafkaSettings
from service.errors import SinkError

__all__ = [
    "DeadLetterEvent",
    "DeadLetterEvents",
    "DeliveringSink",
    "OutRecord",
    "QueueFull",
    "RecordRefused",
    "max_request_bytes",
]

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


class OutRecord(NamedTuple):
    """A record for the forecast or dead-letter topic; `partition` None: by the key's hash."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    partition: int | None


_RESEND_PAUSE = 0.1  # seconds between rounds of re-sending failed records


@dataclass(frozen=True, slots=True)
class DeadLetterEvent:
    """A dead letter the broker refused for good: sent again smaller (``shrunk``), or given
    up (``lost``). `headers` are the dead letter's (reason and source position)."""

    outcome: Literal["shrunk", "lost"]
    headers: Headers
    error: str


class DeadLetterEvents:
    """The refusals a sink met, kept until the service takes them (any thread may add)."""

    def __init__(self) -> None:
        self._events: deque[DeadLetterEvent] = deque()

    def refused(
        self, key: bytes | None, value: bytes | None, headers: Headers | None, error: str
    ) -> DeadLetter | None:
        """The form to send a refused dead letter in next, or None when it is given up."""
        smaller = shrink_dead_letter(DeadLetter(key, value, list(headers or [])))
        outcome: Literal["shrunk", "lost"] = "lost" if smaller is None else "shrunk"
        self._events.append(DeadLetterEvent(outcome, list(headers or []), error))
        return smaller

    def take(self) -> list[DeadLetterEvent]:
        """The events since the last call, oldest first."""
        taken: list[DeadLetterEvent] = []
        while self._events:
            taken.append(self._events.popleft())
        return taken


def max_request_bytes(settings: KafkaSettings) -> int:
    """The forecast and dead-letter producer's largest request: room for the largest dead
    letter (``kafka.dead_letter_max_bytes``) and its headers, and never below 1 MiB."""
    return max(1 << 20, 2 * settings.max_message_bytes, settings.dead_letter_max_bytes + (64 << 10))


class QueueFull(Exception):
    """The client found no room for the record within its wait: keep it for `flush`."""


class RecordRefused(SinkError):
    """The client refuses the record itself (too large for it): sending it again cannot help."""


class DeliveringSink(ABC):
    """Forecasts and dead letters, delivered at least once; see the module docstring."""

    def __init__(self, forecast_topic: str, dead_letter_topic: str, shadow_topic: str) -> None:
        self.forecast_topic = forecast_topic
        self.dead_letter_topic = dead_letter_topic
        self.shadow_topic = shadow_topic
        # records whose delivery failed, with why, for `flush` to send again
        self._failed: deque[tuple[OutRecord, object]] = deque()
        self._refusals = DeadLetterEvents()

    # -- what an adapter implements --------------------------------------------------------

    @abstractmethod
    def _produce(self, record: OutRecord) -> None:
        """Queue one record; raise `QueueFull` or `RecordRefused`, or `SinkError` when the
        client cannot send at all."""

    @abstractmethod
    def _deliver(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for every queued record's delivery (failures come
        back through `_delivery_failed`); return how many are still unacknowledged (None:
        some, the client does not say how many)."""

    @abstractmethod
    def _retriable(self, error: object) -> bool:
        """Whether a failed delivery may succeed if sent again (a broker unreachable, a leader
        moving) rather than being refused for good (too large, not authorised)."""

    def _delivery_failed(self, record: OutRecord, error: object) -> None:
        """Keep a record whose delivery failed, for `flush` (safe from any thread)."""
        self._failed.append((record, error))

    # -- the sink --------------------------------------------------------------------------

    def send_forecasts(
        self,
        stream_ids: Sequence[str],
        values: Sequence[bytes],
        partitions: Sequence[int] | None = None,
    ) -> None:
        """Send one forecast per stream, keyed by it, in order; `partitions` (one per
        forecast) skip the key hash when the output topic mirrors the input's partitions."""
        keys = [stream_id.encode() for stream_id in stream_ids]
        self._send_many(self.forecast_topic, keys, values, partitions)

    def send_forecast(self, stream_id: str, value: bytes, partition: int | None = None) -> None:
        """Send one forecast (`send_forecasts` of one)."""
        self.send_forecasts([stream_id], [value], None if partition is None else [partition])

    def send_shadows(
        self,
        stream_ids: Sequence[str],
        values: Sequence[bytes],
        partitions: Sequence[int] | None = None,
    ) -> None:
        """Send a challenger's forecasts to the shadow topic, as `send_forecasts` does."""
        keys = [stream_id.encode() for stream_id in stream_ids]
        self._send_many(self.shadow_topic, keys, values, partitions)

    def _send_many(
        self,
        topic: str,
        keys: Sequence[bytes],
        values: Sequence[bytes],
        partitions: Sequence[int] | None,
    ) -> None:
        """Queue records to `topic`, one `_produce` each; adapters with a faster way to
        queue many records override this."""
        if partitions is None:
            for key, value in zip(keys, values, strict=True):
                self._send(OutRecord(topic, key, value, None, None))
        else:
            for key, value, partition in zip(keys, values, partitions, strict=True):
                self._send(OutRecord(topic, key, value, None, partition))

    def send_dead_letter(self, key: bytes | None, value: bytes | None, headers: Headers) -> None:
        """Send a dead letter; one the client refuses for its size is sent smaller (see
        `DeadLetterEvents`), never raised."""
        if key is None and value is None:
            value = b""  # a record needs a key or a value
        while True:
            try:
                self._send(OutRecord(self.dead_letter_topic, key, value, headers, None))
                return
            except RecordRefused as exc:
                smaller = self._refusals.refused(key, value, headers, str(exc))
                if smaller is None:
                    return
                key, value, headers = smaller.key, smaller.value, smaller.headers

    def take_dead_letter_events(self) -> list[DeadLetterEvent]:
        """Dead letters refused for good since the last call (sent smaller, or lost)."""
        return self._refusals.take()

    def _send(self, record: OutRecord) -> None:
        try:
            self._produce(record)
        except QueueFull as exc:
            # The buffer stayed full or the topic's metadata is unknown (broker unreachable):
            # keep the record; `flush` sends it again, and fails the checkpoint meanwhile.
            self._failed.append((record, exc))

    def deliver(self, timeout: float) -> None:
        """Send what is queued now, not after the linger, and wait up to `timeout` seconds
        for its acknowledgement. Never raises: failed records are kept for `flush`, as are
        those still unacknowledged."""
        self._deliver(timeout)

    def flush(self, timeout: float) -> None:
        """Block until every record sent so far is acknowledged, re-sending failed ones.

        Raises `SinkError` when that takes longer than `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = self._deliver(max(0.0, deadline - time.monotonic()))
            if left != 0:
                some = "" if left is None else f"{left} "
                raise SinkError(
                    f"{some}records not acknowledged within {timeout:g} s (broker unreachable?)"
                )
            if not self._failed:
                return
            n = len(self._failed)
            first = self._failed[0][1]
            if time.monotonic() >= deadline:
                raise SinkError(
                    f"{n} records failed delivery and time ran out; last error: {first}"
                )
            log.warning("delivery failed, sending again records=%d error=%s", n, first)
            time.sleep(min(_RESEND_PAUSE, max(0.0, deadline - time.monotonic())))
            for _ in range(n):
                self._resend(*self._failed.popleft())

    def _resend(self, record: OutRecord, error: object) -> None:
        """Send a failed record again; a dead letter refused for good goes smaller instead."""
        if record.topic != self.dead_letter_topic:
            try:
                self._send(record)
            except RecordRefused:
                self._failed.append((record, error))
                raise
            return
        if self._retriable(error):
            self.send_dead_letter(record.key, record.value, record.headers or [])
            return
        smaller = self._refusals.refused(record.key, record.value, record.headers, str(error))
        if smaller is not None:
            self.send_dead_letter(smaller.key, smaller.value, smaller.headers)
