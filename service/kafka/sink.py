"""The forecast and dead-letter sink: one kafka-python producer, batched, keyed by stream.

Sends are asynchronous (the producer batches them for ``linger_ms``). A record whose
delivery fails is kept and sent again by `flush`, which returns only when every record sent
so far is acknowledged, so the checkpoint can commit input offsets after it without losing
a forecast (at-least-once).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from service.config import KafkaSettings
from service.errors import SinkError
from service.kafka.deadletters import DeadLetterEvent, DeadLetterEvents, max_request_bytes

__all__ = ["KafkaSink"]

log = logging.getLogger(__name__)

_Headers = list[tuple[str, bytes]]
_RESEND_PAUSE = 0.1  # seconds between rounds of re-sending failed records
MAX_BLOCK_MS = 5000  # longest a send waits for buffer space or metadata


def _make_producer(settings: KafkaSettings) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers.split(","),
        client_id=settings.client_id,
        acks="all",
        linger_ms=settings.linger_ms,
        batch_size=256 * 1024,
        max_request_size=max_request_bytes(settings),
        reconnect_backoff_max_ms=int(settings.reconnect_backoff_max * 1000),
        max_block_ms=MAX_BLOCK_MS,
    )


class KafkaSink:
    """Produces forecasts and dead letters."""

    def __init__(self, settings: KafkaSettings, producer: Any | None = None) -> None:
        """`producer` replaces the kafka-python producer (tests pass one with the same
        ``send``/``flush``/``close`` methods)."""
        self.forecast_topic = settings.output_topic
        self.dead_letter_topic = settings.dead_letter_topic
        self._producer = producer if producer is not None else _make_producer(settings)
        self._failed: deque[
            tuple[str, bytes | None, bytes | None, _Headers | None, int | None, BaseException]
        ] = deque()
        self._refusals = DeadLetterEvents()

    def send_forecast(self, stream_id: str, value: bytes, partition: int | None = None) -> None:
        """Send a forecast keyed by its stream; `partition` skips the key hash when the
        output topic mirrors the input's partitions."""
        self._send(self.forecast_topic, stream_id.encode(), value, None, partition)

    def send_dead_letter(self, key: bytes | None, value: bytes | None, headers: _Headers) -> None:
        """Send a dead letter; one the producer refuses for its size is sent smaller (see
        `service.kafka.deadletters`), never raised."""
        if key is None and value is None:
            value = b""  # a record needs a key or a value
        while True:
            try:
                self._send(self.dead_letter_topic, key, value, headers, None)
                return
            except KafkaError as exc:
                smaller = self._refusals.refused(key, value, headers, repr(exc))
                if smaller is None:
                    return
                key, value, headers = smaller.key, smaller.value, smaller.headers

    def take_dead_letter_events(self) -> list[DeadLetterEvent]:
        return self._refusals.take()

    def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: _Headers | None,
        partition: int | None,
    ) -> None:
        try:
            future = self._producer.send(
                topic, key=key, value=value, headers=headers, partition=partition
            )
        except KafkaTimeoutError as exc:
            # The buffer is full or the topic's metadata is unknown (broker unreachable):
            # keep the record; `flush` sends it again, and fails the checkpoint meanwhile.
            self._failed.append((topic, key, value, headers, partition, exc))
            return
        future.add_errback(self._on_error, topic, key, value, headers, partition)

    def _on_error(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: _Headers | None,
        partition: int | None,
        exc: BaseException,
    ) -> None:
        # Runs on the producer's I/O thread; deque.append is thread-safe.
        self._failed.append((topic, key, value, headers, partition, exc))

    def flush(self, timeout: float) -> None:
        """Block until every record sent so far is acknowledged, re-sending failed ones.

        Raises `SinkError` when that takes longer than `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                self._producer.flush(timeout=max(0.0, remaining))
            except KafkaError as exc:
                raise SinkError(
                    f"records not acknowledged within {timeout:g} s (broker unreachable?)"
                ) from exc
            if not self._failed:
                return
            n = len(self._failed)
            first = self._failed[0][5]
            if time.monotonic() >= deadline:
                raise SinkError(
                    f"{n} records failed delivery and time ran out; last error: {first}"
                )
            log.warning("delivery failed, sending again records=%d error=%s", n, first)
            time.sleep(min(_RESEND_PAUSE, max(0.0, deadline - time.monotonic())))
            for _ in range(n):
                topic, key, value, headers, partition, why = self._failed.popleft()
                if topic == self.dead_letter_topic and not getattr(why, "retriable", True):
                    smaller = self._refusals.refused(key, value, headers, repr(why))
                    if smaller is not None:
                        self.send_dead_letter(smaller.key, smaller.value, smaller.headers)
                    continue
                try:
                    self._send(topic, key, value, headers, partition)
                except KafkaError as exc:
                    self._failed.append((topic, key, value, headers, partition, exc))
                    raise SinkError(f"cannot send to {topic}: {exc}") from exc

    def close(self, timeout: float = 5.0) -> None:
        self._producer.close(timeout=timeout)

    @property
    def producer(self) -> Any:
        return self._producer
