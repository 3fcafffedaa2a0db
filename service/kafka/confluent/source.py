"""The reading source on confluent-kafka: one consumer in the group, polled in micro-batches.

As with kafka-python, offsets are committed by hand (``enable.auto.commit=false``), only by
the checkpoint, and only what it gives (`service.offsets` decides which). librdkafka runs
the rebalance callbacks inside ``consume``/``poll`` on the calling thread, so the revoke's
offsets are committed synchronously right there, before the member rejoins. A poll hands the decoder a
`RecordColumns` (one list per field) rather than a wrapper object per message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from service.codec import RecordColumns
from service.config import KafkaSettings
from service.errors import GroupChangingError, TransportError
from service.kafka.confluent.config import GROUP_CHURN, base_config, describe, error_of
from service.transport import RebalanceHandler

__all__ = ["ConfluentSource"]

log = logging.getLogger(__name__)

_EMPTY = RecordColumns("", [], [], [], [], [])


class ConfluentSource:
    """Consumes the input topic; `poll()` returns one micro-batch as columns."""

    def __init__(
        self,
        settings: KafkaSettings,
        handler: RebalanceHandler,
        consumer: Callable[[dict[str, Any]], Any] = Consumer,
    ) -> None:
        """`consumer` builds the client from its config (tests pass a stand-in)."""
        self.topic = settings.input_topic
        self._handler = handler
        self._max_batch = settings.max_batch
        self._wait = settings.max_wait_ms / 1000
        self._consumer = consumer(
            {
                **base_config(settings, settings.client_id),
                "group.id": settings.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": settings.auto_offset_reset,
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": settings.heartbeat_interval_ms,
                "max.poll.interval.ms": settings.max_poll_interval_ms,
                # as with kafka-python: a fetch waits at the broker no longer than a poll does
                "fetch.wait.max.ms": settings.max_wait_ms,
                **_fetch_pause(settings.fetch_pause_ms),
                # bounds a synchronous commit's request (librdkafka's commit takes no timeout)
                "socket.timeout.ms": max(1000, int(settings.checkpoint_timeout * 1000)),
            }
        )
        self._assigned: set[int] = set()
        self._paused: set[int] = set()
        self._consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    # -- polling ---------------------------------------------------------------------------

    def poll(self) -> RecordColumns:
        """Up to ``max_batch`` records, waiting at most ``max_wait_ms`` for the first.

        Like kafka-python's poll it returns as soon as records are there (``consume`` alone
        would wait out the timeout to fill the batch).
        """
        consumer = self._consumer
        try:
            messages: list[Message] = consumer.consume(self._max_batch, 0)
            if not messages:
                first = consumer.poll(self._wait)
                if first is None:
                    return _EMPTY
                messages = [first]
                if self._max_batch > 1:
                    messages += consumer.consume(self._max_batch - 1, 0)
        except KafkaException as exc:
            raise TransportError(f"poll failed: {describe(exc)}") from exc
        if any([m.error() is not None for m in messages]):
            messages = self._drop_errors(messages)
            if not messages:
                return _EMPTY
        return RecordColumns(
            self.topic,
            [m.key() for m in messages],
            [m.value() for m in messages],
            # set on every message that is not an error
            cast(list[int], [m.partition() for m in messages]),
            cast(list[int], [m.offset() for m in messages]),
            # (type, ms); type 0 is TIMESTAMP_NOT_AVAILABLE
            [ms if kind else -1 for kind, ms in [m.timestamp() for m in messages]],
        )

    def _drop_errors(self, messages: list[Message]) -> list[Message]:
        for m in messages:
            err = m.error()
            if err is None:
                continue
            if err.fatal():
                raise TransportError(f"consumer failed: {err.name()}: {err.str()}")
            log.warning(
                "consumer error topic=%s partition=%s code=%s error=%s",
                m.topic(),
                m.partition(),
                err.name(),
                err.str(),
            )
        return [m for m in messages if m.error() is None]

    # -- partitions ------------------------------------------------------------------------

    def assignment(self) -> set[int]:
        """The partitions assigned to this member."""
        return set(self._assigned)

    def pause(self, partitions: Iterable[int]) -> None:
        """Stop fetching these partitions (those assigned) until `resume`."""
        parts = set(partitions) & self._assigned
        if parts:
            self._consumer.pause([TopicPartition(self.topic, p) for p in sorted(parts)])
            self._paused |= parts

    def resume(self, partitions: Iterable[int]) -> None:
        """Fetch these partitions again."""
        parts = set(partitions) & self._paused
        if parts:
            self._consumer.resume([TopicPartition(self.topic, p) for p in sorted(parts)])
            self._paused -= parts

    def paused(self) -> set[int]:
        """The paused partitions."""
        return set(self._paused)

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in partitions}
        # Assign here rather than after the callback, so that the handler can pause the
        # partitions it restores first before anything of theirs is fetched; a partition
        # assigned again starts unpaused, as with kafka-python.
        consumer.assign(partitions)
        if partitions:
            consumer.resume(partitions)
        self._assigned = parts
        self._paused = set()
        log.info("partitions assigned topic=%s partitions=%s", self.topic, sorted(parts))
        self._handler.partitions_assigned(parts)

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in partitions}
        if not parts:
            return
        log.info("partitions revoked topic=%s partitions=%s", self.topic, sorted(parts))
        offsets = self._handler.partitions_revoked(parts)
        self._assigned -= parts
        self._paused -= parts
        if not offsets:
            return
        try:
            self._commit_offsets(offsets)
        except TransportError as exc:
            log.warning(
                "commit on revoke failed topic=%s offsets=%s error=%s", self.topic, offsets, exc
            )
            return
        log.info("offsets committed on revoke topic=%s offsets=%s", self.topic, offsets)

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in partitions}
        log.warning("partitions lost topic=%s partitions=%s", self.topic, sorted(parts))
        self._handler.partitions_lost(parts)
        self._assigned -= parts
        self._paused -= parts

    # -- commits ---------------------------------------------------------------------------

    def commit(self, offsets: Mapping[int, int], timeout: float) -> None:
        """Commit `offsets` synchronously; with none, read the committed offsets of the
        assigned partitions instead (a round trip to the group coordinator all the same).

        Raises `GroupChangingError` when a rebalance refuses the commit and
        `TransportError` when the broker does.
        """
        if offsets:
            self._commit_offsets(offsets)
        elif self._assigned:
            tps = [TopicPartition(self.topic, p) for p in sorted(self._assigned)]
            try:
                self._consumer.committed(tps, timeout=timeout)
            except KafkaException as exc:
                raise _commit_error(exc) from exc

    def _commit_offsets(self, offsets: Mapping[int, int]) -> None:
        try:
            results = self._consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in sorted(offsets.items())],
                asynchronous=False,
            )
        except KafkaException as exc:
            raise _commit_error(exc) from exc
        for tp in results or []:
            if tp.error is not None:
                raise _commit_error(KafkaException(tp.error))

    # -- the rest --------------------------------------------------------------------------

    def lag(self, positions: Mapping[int, int]) -> dict[int, int]:
        """High watermark (as the last fetch reported it) minus the next offset to process
        (`positions`, else the consumer's position), per assigned partition with both known."""
        out: dict[int, int] = {}
        for p in sorted(self._assigned):
            tp = TopicPartition(self.topic, p)
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            position = positions.get(p)
            if position is None:
                (known,) = self._consumer.position([tp])
                position = known.offset
            if high < 0 or position < 0:
                continue
            out[p] = max(0, high - position)
        return out

    def close(self, timeout: float = 5.0) -> None:
        """Leave the group (running the revoke callback) and close.

        librdkafka's close takes no timeout; the revoke checkpoint bounds its own waits.
        """
        try:
            self._consumer.close()
        except KafkaException as exc:
            log.warning("consumer close failed error=%s", describe(exc))

    @property
    def consumer(self) -> Any:
        """The underlying confluent-kafka consumer (for tests and diagnostics)."""
        return self._consumer


def _fetch_pause(pause_ms: int) -> dict[str, int]:
    """librdkafka fetches on its own thread, ahead of the polls: ``kafka.fetch_pause_ms`` is
    its wait before fetching a partition again while records it fetched are still queued
    (``queued.min.messages`` 1), as they are right after every fetch that found some; a
    service behind the input finds its queue full at every fetch, and waits the pause once
    per fetched chunk (up to ``max.partition.fetch.bytes`` per partition)."""
    if not pause_ms:
        return {}
    return {"queued.min.messages": 1, "fetch.queue.backoff.ms": pause_ms}


def _commit_error(exc: KafkaException) -> TransportError:
    err = error_of(exc)
    if err is not None and err.code() in GROUP_CHURN:
        return GroupChangingError(f"commit refused: {err.name()}")
    return TransportError(f"commit failed: {describe(exc)}")
