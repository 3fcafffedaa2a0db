"""The forecast and dead-letter sink on kafka-python: one producer, batched, keyed by stream.

Sends are asynchronous (the producer batches them for ``linger_ms``); a failed delivery
comes back on the producer's I/O thread through the future's errback. What is done with
it (kept, sent again by `flush`, a refused dead letter sent smaller) is
`service.delivery.DeliveringSink`'s, the same for both clients.
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from service.config import KafkaSettings
from service.delivery import (
    DeliveringSink,
    OutRecord,
    QueueFull,
    RecordRefused,
    max_request_bytes,
)
from service.kafka.security import kafka_python_options

__all__ = ["BATCH_BYTES", "MAX_BLOCK_MS", "KafkaSink"]

MAX_BLOCK_MS = 5000  # longest a send waits for buffer space or metadata
# A batch fills to just under 1 MiB, within a broker's default message.max.bytes
# (1,048,588). Against 256 KiB, draining a backlog of 80,000 readings on the embedded broker
# (bench.longstreams, four paired runs) was 3-15% faster over 4 partitions and 5-30% over
# one: a hot partition's forecasts go out in a quarter of the produce requests, and the
# producer wakes its sender thread once per batch queued behind another.
BATCH_BYTES = 960 * 1024


def _make_producer(settings: KafkaSettings) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers.split(","),
        client_id=settings.client_id,
        acks="all",
        linger_ms=settings.linger_ms,
        batch_size=BATCH_BYTES,
        max_request_size=max_request_bytes(settings),
        reconnect_backoff_max_ms=int(settings.reconnect_backoff_max * 1000),
        max_block_ms=MAX_BLOCK_MS,
        **kafka_python_options(settings),
    )


class KafkaSink(DeliveringSink):
    """Produces forecasts and dead letters with kafka-python."""

    def __init__(self, settings: KafkaSettings, producer: Any | None = None) -> None:
        """`producer` replaces the kafka-python producer (tests pass one with the same
        ``send``/``flush``/``close`` methods)."""
        super().__init__(settings.output_topic, settings.dead_letter_topic, settings.shadow_topic)
        self._producer = producer if producer is not None else _make_producer(settings)

    def send_forecast(self, stream_id: str, value: bytes, partition: int | None = None) -> None:
        """Send a forecast keyed by its stream; `partition` skips the key hash when the
        output topic mirrors the input's partitions."""
        self._send(OutRecord(self.forecast_topic, stream_id.encode(), value, None, partition))

    def _produce(self, record: OutRecord) -> None:
        topic, key, value, headers, partition = record
        try:
            future = self._producer.send(
                topic, key=key, value=value, headers=headers, partition=partition
            )
        except KafkaTimeoutError as exc:
            raise QueueFull(str(exc)) from exc
        except KafkaError as exc:  # MessageSizeTooLargeError, for one
            raise RecordRefused(repr(exc)) from exc
        future.add_errback(self._delivery_failed, record)

    def _deliver(self, timeout: float) -> int | None:
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError:
            return None  # kafka-python's flush timed out; it does not say how many are left
        return 0

    def _retriable(self, error: object) -> bool:
        return bool(getattr(error, "retriable", True))

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is still queued, for up to `timeout` seconds, and close."""
        self._producer.close(timeout=timeout)

    @property
    def producer(self) -> Any:
        """The kafka-python producer."""
        return self._producer
