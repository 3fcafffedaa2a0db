"""The forecast and dead-letter sink on confluent-kafka: one producer, batched by librdkafka.

``produce`` only queues a record (about 1 us, against about 25 us for kafka-python's
``send``). Delivery reports come back for failures only (``delivery.report.only.error``),
so a successful record costs no Python callback; a failed one is kept and sent again by
`flush`, which returns only when every record sent so far is acknowledged, so the
checkpoint can commit input offsets after it (at-least-once).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from service.config import KafkaSettings
from service.errors import SinkError
from service.kafka.confluent.config import base_config, describe
from service.kafka.deadletters import DeadLetterEvent, DeadLetterEvents, max_request_bytes

__all__ = ["ConfluentSink", "produce_when_room"]

log = logging.getLogger(__name__)

_Headers = list[tuple[str, bytes]]
# topic, key, value, headers, partition, why it failed
_Failed = tuple[str, bytes | None, bytes | None, Any, int, KafkaError | str]
_RESEND_PAUSE = 0.1  # seconds between rounds of re-sending failed records
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


class ConfluentSink:
    """Produces forecasts and dead letters."""

    def __init__(
        self, settings: KafkaSettings, producer: Callable[[dict[str, Any]], Any] = Producer
    ) -> None:
        """`producer` builds the client from its config (tests pass a stand-in that calls
        the config's ``on_delivery`` as librdkafka would)."""
        self.forecast_topic = settings.output_topic
        self.dead_letter_topic = settings.dead_letter_topic
        self._failed: deque[_Failed] = deque()
        self._refusals = DeadLetterEvents()
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
        self._produce = self._producer.produce

    def send_forecast(self, stream_id: str, value: bytes, partition: int | None = None) -> None:
        """Send a forecast keyed by its stream; `partition` skips the key hash when the
        output topic mirrors the input's partitions."""
        key = stream_id.encode()
        target = _ANY_PARTITION if partition is None else partition
        try:
            self._produce(self.forecast_topic, value, key, target)
        except BufferError:
            self._send_when_room(self.forecast_topic, key, value, None, target)
        except KafkaException as exc:
            raise SinkError(f"cannot send to {self.forecast_topic}: {describe(exc)}") from exc

    def send_dead_letter(self, key: bytes | None, value: bytes | None, headers: _Headers) -> None:
        """Send a dead letter; one the producer refuses for its size is sent smaller (see
        `service.kafka.deadletters`), never raised."""
        if key is None and value is None:
            value = b""  # a record needs a key or a value
        while True:
            try:
                self._send(self.dead_letter_topic, key, value, headers, _ANY_PARTITION)
                return
            except SinkError as exc:
                smaller = self._refusals.refused(key, value, headers, str(exc.__cause__ or exc))
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
        partition: int,
    ) -> None:
        try:
            self._produce(topic, value, key, partition, headers=headers)
        except BufferError:
            self._send_when_room(topic, key, value, headers, partition)
        except KafkaException as exc:
            raise SinkError(f"cannot send to {topic}: {describe(exc)}") from exc

    def _send_when_room(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: _Headers | None,
        partition: int,
    ) -> None:
        # The queue is full (the broker is slow or unreachable): keep the record when it
        # stays full; `flush` sends it again, and fails the checkpoint meanwhile.
        if not produce_when_room(self._producer, topic, value, key, partition, headers=headers):
            self._failed.append((topic, key, value, headers, partition, "the send queue is full"))

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        # Served by poll() and flush() on the calling thread; only failures are reported.
        if err is None:
            return
        partition = msg.partition()
        self._failed.append(
            (
                msg.topic() or "",
                msg.key(),
                msg.value(),
                msg.headers(),
                partition if partition is not None and partition >= 0 else _ANY_PARTITION,
                err,
            )
        )

    def flush(self, timeout: float) -> None:
        """Block until every record sent so far is acknowledged, re-sending failed ones.

        Raises `SinkError` when that takes longer than `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = self._producer.flush(max(0.0, deadline - time.monotonic()))
            if left:
                raise SinkError(
                    f"{left} records not acknowledged within {timeout:g} s (broker unreachable?)"
                )
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
                topic, key, value, headers, partition, err = self._failed.popleft()
                if (
                    topic == self.dead_letter_topic
                    and isinstance(err, KafkaError)
                    and not err.retriable()
                ):
                    smaller = self._refusals.refused(key, value, headers, str(err))
                    if smaller is not None:
                        self.send_dead_letter(smaller.key, smaller.value, smaller.headers)
                    continue
                self._send(topic, key, value, headers, partition)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is still queued, for up to `timeout` seconds."""
        self._producer.flush(timeout)

    @property
    def producer(self) -> Any:
        return self._producer
