"""The forecast and dead-letter sink on confluent-kafka: one producer, batched by librdkafka.

``produce`` only queues a record (about 1 us, against about 25 us for kafka-python's
``send``). Delivery reports come back for failures only (``delivery.report.only.error``),
so a successful record costs no Python callback; what is done with a failed one (kept,
sent again by `flush`, a refused dead letter sent smaller) is
`service.delivery.DeliveringSink`'s, the same for both clients.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from service.config import KafkaSettings
from service.delivery import (
    DeliveringSink,
    Headers,
    OutRecord,
    QueueFull,
    RecordRefused,
    max_request_bytes,
)
from service.errors import SinkError
from service.kafka.confluent.config import base_config, describe

__all__ = ["ConfluentSink", "produce_when_room"]

_MAX_BLOCK = 5.0  # longest a send waits for room in a full queue (kafka-python: max_block_ms)
_ANY_PARTITION = -1  # librdkafka's RD_KAFKA_PARTITION_UA: partition by the key's hash


def produce_when_room(producer: Any, *args: Any, **kwargs: Any) -> bool:
    """``producer.produce(*args)`` once its queue has room: serve delivery reports and try
    again for up to 5 s. False when the queue stayed full."""
    deadline = time.monotonic() + _MAX_BLOCK
    while True:
        producer.poll(0.05)
        try:
            producer.produce(*args, **kwargs)
        except BufferError:
            if time.monotonic() >= deadline:
                return False
            continue
        return True


class ConfluentSink(DeliveringSink):
    """Produces forecasts and dead letters with confluent-kafka."""

    def __init__(
        self, settings: KafkaSettings, producer: Callable[[dict[str, Any]], Any] = Producer
    ) -> None:
        """`producer` builds the client from its config (tests pass a stand-in that calls
        the config's ``on_delivery`` as librdkafka would)."""
        super().__init__(settings.output_topic, settings.dead_letter_topic, settings.shadow_topic)
        self._producer = producer(
            {
                **base_config(settings, settings.client_id),
                "acks": "all",
                "linger.ms": settings.linger_ms,
                "batch.size": 256 * 1024,
                "message.max.bytes": max_request_bytes(settings),
                "queue.buffering.max.messages": 1_000_000,
                "delivery.report.only.error": True,
                "on_delivery": self._on_delivery,
            }
        )
        self._queue = self._producer.produce

    def _send_many(
        self,
        topic: str,
        keys: Sequence[bytes],
        values: Sequence[bytes],
        partitions: Sequence[int] | None,
    ) -> None:
        """The hot path: one ``produce`` call per record; a record the queue has no room for
        (or the client refuses) takes `_produce`'s way, which waits or says why."""
        queue = self._queue
        targets: Sequence[int] = [_ANY_PARTITION] * len(keys) if partitions is None else partitions
        for key, value, target in zip(keys, values, targets, strict=True):
            try:
                queue(topic, value, key, target)
            except (BufferError, KafkaException):
                partition = None if target == _ANY_PARTITION else target
                self._send(OutRecord(topic, key, value, None, partition))

    def _produce(self, record: OutRecord) -> None:
        topic, key, value, headers, partition = record
        target = _ANY_PARTITION if partition is None else partition
        try:
            self._queue(topic, value, key, target, headers=headers)
        except BufferError:
            # The queue is full (the broker is slow or unreachable): wait for room a while
            if not produce_when_room(self._producer, topic, value, key, target, headers=headers):
                raise QueueFull("the send queue is full") from None
        except KafkaException as exc:
            if _refused(exc):
                raise RecordRefused(describe(exc)) from exc
            raise SinkError(f"cannot send to {topic}: {describe(exc)}") from exc

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        # Served by poll() and flush() on the calling thread; only failures are reported.
        if err is None:
            return
        partition = msg.partition()
        record = OutRecord(
            msg.topic() or "",
            msg.key(),
            msg.value(),
            cast(Headers | None, msg.headers()),
            partition if partition is not None and partition >= 0 else None,
        )
        self._delivery_failed(record, err)

    def _deliver(self, timeout: float) -> int | None:
        left: int = self._producer.flush(timeout)
        return left

    def _retriable(self, error: object) -> bool:
        return not isinstance(error, KafkaError) or bool(error.retriable())

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is still queued, for up to `timeout` seconds."""
        self._producer.flush(timeout)

    @property
    def producer(self) -> Any:
        """The confluent-kafka producer."""
        return self._producer


def _refused(exc: KafkaException) -> bool:
    """Whether librdkafka refused the record itself (too large), not the sending."""
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE
