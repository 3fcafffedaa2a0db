"""The state changelog on confluent-kafka: the same topic, records and partitions as the
kafka-python `ChangelogWriter` and `ChangelogReader` (see `service.kafka.changelog`).

The reader knows a partition is read to its end from librdkafka's partition-EOF event
(``enable.partition.eof``), raised when a fetch reaches the high watermark the broker's
fetch response reports. It never asks ListOffsets for the end: the embedded broker answers
that short of the log end (see `service.kafka.changelog`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
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

from service.config import KafkaSettings
from service.errors import ChangelogError
from service.kafka.changelog import changelog_topic
from service.kafka.confluent.config import base_config, describe
from service.kafka.confluent.sink import produce_when_room
from service.kafka.transport import PartitionRestore

__all__ = ["ConfluentChangelogReader", "ConfluentChangelogWriter"]

log = logging.getLogger(__name__)

_POLL = 0.05  # seconds one consume waits while reading a changelog
_BATCH = 100_000  # most messages one consume returns
_FETCH_BYTES = 32 * 1024 * 1024


class ConfluentChangelogWriter:
    """Produces state records and tombstones to explicit partitions."""

    def __init__(
        self, settings: KafkaSettings, producer: Callable[[dict[str, Any]], Any] = Producer
    ) -> None:
        """`producer` builds the client from its config (tests pass a stand-in)."""
        self.topic = changelog_topic(settings)
        self._errors: list[KafkaError | str] = []
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
            self._errors.append(err)

    def send(
        self,
        partitions: Sequence[int],
        keys: Sequence[str],
        values: Sequence[bytes | None],
    ) -> int:
        """Send one record per stream (a None value is a tombstone); return the bytes sent.

        Delivery is confirmed by `flush`.
        """
        producer, topic = self._producer, self.topic
        produce = producer.produce
        size = 0
        try:
            for partition, key, value in zip(partitions, keys, values, strict=True):
                try:
                    produce(topic, value, key.encode(), partition)
                except BufferError:
                    if not produce_when_room(producer, topic, value, key.encode(), partition):
                        raise ChangelogError(
                            f"changelog {topic}: the send queue stayed full (broker unreachable?)"
                        ) from None
                size += len(key) + (len(value) if value is not None else 0)
        except KafkaException as exc:
            raise ChangelogError(f"cannot send to changelog {topic}: {describe(exc)}") from exc
        return size

    def flush(self, timeout: float) -> None:
        """Block until every record sent is acknowledged; `ChangelogError` when one failed or
        time ran out (the caller writes the same streams again at its next checkpoint)."""
        left = self._producer.flush(timeout)
        if left:
            raise ChangelogError(
                f"{left} changelog records not acknowledged within {timeout:g} s "
                "(broker unreachable?)"
            )
        if self._errors:
            first, n = self._errors[0], len(self._errors)
            self._errors = []
            raise ChangelogError(f"{n} changelog records failed delivery; first error: {first}")

    def close(self, timeout: float = 5.0) -> None:
        self._producer.flush(timeout)


class ConfluentChangelogReader:
    """Reads changelog partitions to their end with its own group-less consumer (assigned
    partitions, nothing committed; librdkafka wants a ``group.id`` all the same)."""

    def __init__(
        self, settings: KafkaSettings, consumer: Callable[[dict[str, Any]], Any] = Consumer
    ) -> None:
        self.topic = changelog_topic(settings)
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

    def read(self, partitions: Iterable[int], timeout: float) -> list[PartitionRestore]:
        """Every partition in `partitions` read from its beginning to its end.

        Raises `ChangelogError` when that takes longer than `timeout` seconds.
        """
        parts = sorted(set(partitions))
        if not parts:
            return []
        started = time.monotonic()
        deadline = started + timeout
        consumer = self._consumer
        latest: dict[int, dict[bytes | None, bytes | None]] = {p: {} for p in parts}
        counts = dict.fromkeys(parts, 0)
        done: dict[int, float] = {}
        pending = set(parts)
        last_error = ""
        try:
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            while pending:
                if time.monotonic() > deadline:
                    raise ChangelogError(
                        f"changelog {self.topic} partitions {sorted(pending)} not read to their "
                        f"end within {timeout:g} s" + (f" ({last_error})" if last_error else "")
                    )
                for m in consumer.consume(_BATCH, _POLL):
                    err = m.error()
                    if err is None:
                        p = m.partition()
                        latest[p][m.key()] = m.value()
                        counts[p] += 1
                    elif err.code() == KafkaError._PARTITION_EOF:
                        p = m.partition()
                        if p in pending:
                            pending.discard(p)
                            done[p] = time.monotonic() - started
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
        return [PartitionRestore.fold(p, latest[p], counts[p], done[p]) for p in parts]

    def close(self) -> None:
        try:
            self._consumer.close()
        except KafkaException as exc:
            log.warning("changelog reader close failed error=%s", describe(exc))
