"""The state changelog on confluent-kafka: the same topic, records and partitions as the
kafka-python `ChangelogWriter` and `ChangelogReader`, and the same bookkeeping above them
(`service.changelog`).

The reader knows a partition is read to its end from librdkafka's partition-EOF event
(``enable.partition.eof``), raised when a fetch reaches the high watermark the broker's
fetch response reports. It never asks ListOffsets for the end: the embedded broker answers
that short of the log end (see `service.kafka.changelog`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from service.changelog import ChangelogRead, ChangelogReading, ChangelogWriting
from service.config import KafkaSettings, changelog_topic
from service.errors import ChangelogError
from service.kafka.confluent.config import base_config, describe
from service.kafka.confluent.sink import produce_when_room

__all__ = ["ConfluentChangelogReader", "ConfluentChangelogWriter"]

log = logging.getLogger(__name__)

_POLL = 0.05  # seconds one consume waits while reading a changelog
_BATCH = 100_000  # most messages one consume returns
_FETCH_BYTES = 32 * 1024 * 1024


class ConfluentChangelogWriter(ChangelogWriting):
    """Produces state records and tombstones to explicit partitions."""

    def __init__(
        self, settings: KafkaSettings, producer: Callable[[dict[str, Any]], Any] = Producer
    ) -> None:
        """`producer` builds the client from its config (tests pass a stand-in)."""
        super().__init__(changelog_topic(settings))
        self._producer = producer(
            {
                **base_config(settings, f"{settings.client_id}-changelog"),
                "acks": "all",
                "linger.ms": settings.linger_ms,
                "batch.size": 1024 * 1024,
                "message.max.bytes": 8 * 1024 * 1024,
                # a checkpoint of a million streams fits in the queue
                "queue.buffering.max.messages": 2_000_000,
                "delivery.report.only.error": True,
                "on_delivery": self._on_delivery,
            }
        )

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_failed(err)

    def _produce_all(
        self, partitions: Sequence[int], keys: Sequence[bytes], values: Sequence[bytes | None]
    ) -> None:
        producer, topic = self._producer, self.topic
        produce = producer.produce
        try:
            for partition, key, value in zip(partitions, keys, values, strict=True):
                try:
                    produce(topic, value, key, partition)
                except BufferError:
                    if not produce_when_room(producer, topic, value, key, partition):
                        raise ChangelogError(
                            f"changelog {topic}: the send queue stayed full (broker unreachable?)"
                        ) from None
        except KafkaException as exc:
            raise ChangelogError(f"cannot send to changelog {topic}: {describe(exc)}") from exc

    def _deliver(self, timeout: float) -> None:
        left = self._producer.flush(timeout)
        if left:
            raise ChangelogError(
                f"{left} changelog records not acknowledged within {timeout:g} s "
                "(broker unreachable?)"
            )

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is still queued, for up to `timeout` seconds."""
        self._producer.flush(timeout)


class ConfluentChangelogReader(ChangelogReading):
    """Reads changelog partitions to their end with its own group-less consumer (assigned
    partitions, nothing committed; librdkafka wants a ``group.id`` all the same)."""

    def __init__(
        self, settings: KafkaSettings, consumer: Callable[[dict[str, Any]], Any] = Consumer
    ) -> None:
        """`consumer` builds the client from its config (tests pass a stand-in)."""
        super().__init__(changelog_topic(settings))
        self._consumer = consumer(
            {
                **base_config(settings, f"{settings.client_id}-restore"),
                "group.id": f"{settings.group_id}.restore",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "max.partition.fetch.bytes": _FETCH_BYTES,
                "fetch.wait.max.ms": int(_POLL * 1000),
            }
        )

    def _read_to_end(self, read: ChangelogRead) -> None:
        consumer = self._consumer
        add = read.add
        last_error = ""
        try:
            consumer.assign(
                [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in read.partitions]
            )
            while read.pending:
                read.check_deadline(last_error)
                for m in consumer.consume(_BATCH, _POLL):
                    err = m.error()
                    if err is None:
                        add(m.partition(), m.key(), m.value())
                    elif err.code() == KafkaError._PARTITION_EOF:
                        read.reached_end(m.partition())
                    elif err.fatal():
                        raise ChangelogError(f"cannot read changelog {self.topic}: {err.str()}")
                    else:  # retried by librdkafka until the deadline
                        last_error = f"{err.name()}: {err.str()}"
        except KafkaException as exc:
            raise ChangelogError(f"cannot read changelog {self.topic}: {describe(exc)}") from exc
        finally:
            try:
                consumer.unassign()
            except KafkaException as exc:
                log.warning("changelog unassign failed error=%s", describe(exc))

    def close(self) -> None:
        """Close the consumer; a failure is logged, not raised."""
        try:
            self._consumer.close()
        except KafkaException as exc:
            log.warning("changelog reader close failed error=%s", describe(exc))
