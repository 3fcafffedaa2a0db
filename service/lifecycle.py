"""The input partitions' lifecycle on this member: assigned, restored, paused, moved away.

A newly assigned partition is paused until its streams are restored from its changelog
partition, so that no reading of it is processed against a missing state; a partition kept
through a rebalance keeps its streams in memory (they were checkpointed on revoke). The
streams of partitions that moved to another member are dropped from the store, and while
checkpoints fail the whole assignment is paused so that nothing more piles up
unacknowledged.

The rebalance callbacks (`assigned`, `revoked`) run while the poll loop waits in the
source's ``poll`` or ``close`` (kafka-python on its I/O thread): they pause partitions, set
readiness and queue events; the loop applies them after the poll (`apply_moves`: drops, then
restores), so the store is only ever touched by one thread and never while a batch is half
applied.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence

from service.config import KafkaSettings
from service.core.state import StateStore
from service.errors import ChangelogError, StateError
from service.http import Readiness
from service.metrics import ServiceMetrics
from service.partitions import PartitionStreams
from service.transport import PartitionRestore, Source, StateReader

__all__ = ["PartitionLifecycle"]

log = logging.getLogger(__name__)

_FIRST_BACKOFF = 0.5


class PartitionLifecycle:
    """Assignment, restore, pause and resume of the input partitions this member holds."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        source: Source,
        reader: StateReader,
        store: StateStore,
        streams: PartitionStreams,
        metrics: ServiceMetrics,
        readiness: Readiness,
        also_drop: Sequence[StateStore] = (),
    ) -> None:
        """`also_drop`: stores (a challenger's) whose streams go with the moved partitions'."""
        self._settings = settings
        self.also_drop = list(also_drop)
        self._source = source
        self._reader = reader
        self._store = store
        self.streams = streams
        self._metrics = metrics
        self._readiness = readiness
        # Partitions whose streams are in the store (or being restored into it), and those
        # paused until restored. Both change in the rebalance callbacks and are read by the
        # loop after the poll.
        self._held: set[int] = set()
        self._to_restore: set[int] = set()
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._backoff = _FIRST_BACKOFF
        self._paused = False  # the whole assignment, while checkpoints fail

    # -- what the checkpoint asks -----------------------------------------------------------

    def partitions_of(self, stream_ids: Iterable[str]) -> list[int]:
        """The input partition of each stream, -1 for a stream of no partition held."""
        return self.streams.partitions_of(stream_ids)

    def holds(self, partition: int) -> bool:
        """Whether the partition's streams are this member's to write."""
        return partition in self._held

    def restoring(self, partitions: set[int]) -> set[int]:
        """Those of `partitions` still waiting for their restore."""
        with self._lock:
            return self._to_restore & partitions

    # -- rebalance callbacks ----------------------------------------------------------------

    def assigned(self) -> None:
        """The group assigned this member its partitions (the source's assignment now)."""
        owned = self._source.assignment()
        self.streams.assigned(owned)
        self._metrics.assigned_partitions.set(len(owned))
        with self._lock:
            # partitions kept through the rebalance keep their streams in memory; the
            # others are restored before they are fetched
            new = owned - self._held
            self._held = set(owned)
            self._to_restore = (self._to_restore & owned) | new
            waiting = set(self._to_restore)
        if waiting:
            self._source.pause(sorted(waiting))
            self._retry_at = 0.0
        self._readiness.set("state_restored", not waiting)
        self._readiness.set("partitions_assigned", True)

    def revoked(self, partitions: set[int], *, lost: bool) -> None:
        """Partitions taken away: after their revoke checkpoint, or `lost` without one."""
        if lost:
            # another member may already own them: their streams go without being written
            self.streams.lost(partitions)
        else:
            self.streams.revoked(partitions)
        with self._lock:
            # a partition revoked before its restore ran has nothing in memory to keep
            unrestored = partitions & self._to_restore
            self._to_restore -= partitions
            self._held -= partitions if lost else unrestored
        left = self._source.assignment() - partitions
        self._metrics.assigned_partitions.set(len(left))
        if not left:  # until the rebalance completes
            self._readiness.set("partitions_assigned", False)

    # -- the loop's side --------------------------------------------------------------------

    def apply_moves(self) -> set[int]:
        """Drop the streams of partitions no longer ours (see `PartitionStreams`), then
        restore newly assigned ones; return the partitions that moved away."""
        moves = self.streams.take_moves()
        if moves.partitions:
            topic = self._settings.input_topic
            for p in moves.partitions:
                with contextlib.suppress(KeyError):
                    self._metrics.consumer_lag.remove(topic, str(p))
            self._store.drop(moves.stream_ids)
            for store in self.also_drop:
                store.drop(moves.stream_ids)
            self._metrics.evictions.labels(cause="revoked").inc(len(moves.stream_ids))
            self._metrics.active_streams.set(len(self._store))
            log.info(
                "streams dropped partitions=%s streams=%d",
                sorted(moves.partitions),
                len(moves.stream_ids),
            )
        if moves.assigned and self._paused:  # newly assigned partitions start unpaused
            self._paused = False
            self.pause(True)
        self._restore_pending()
        return moves.partitions

    def pause(self, paused: bool) -> None:
        """While checkpoints fail, stop fetching so nothing more piles up unacknowledged."""
        if paused == self._paused:
            return
        source = self._source
        if paused:
            source.pause(source.assignment())
        else:
            with self._lock:
                waiting = set(self._to_restore)  # these stay paused until restored
            source.resume(source.paused() - waiting)
        self._paused = paused

    def _restore_pending(self) -> None:
        """Load the streams of newly assigned partitions from their changelog partitions,
        then let their readings be fetched. A failed restore is retried with backoff; the
        partitions stay paused meanwhile and /readyz reports ``state_restored`` false."""
        with self._lock:
            pending = set(self._to_restore)
        if not pending or time.monotonic() < self._retry_at:
            return
        started = time.monotonic()
        try:
            restored = self._reader.read(pending, timeout=self._settings.restore_timeout)
        except ChangelogError as exc:
            log.warning(
                "restore failed partitions=%s error=%s retry_in=%.1fs",
                sorted(pending),
                exc,
                self._backoff,
            )
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self._settings.reconnect_backoff_max)
            return
        self._backoff = _FIRST_BACKOFF
        for part in restored:
            self._load(part)
        with self._lock:
            self._to_restore -= pending
            waiting = bool(self._to_restore)
        resume = sorted(pending & self._source.assignment())
        if resume and not self._paused:
            self._source.resume(resume)
        self._metrics.active_streams.set(len(self._store))
        self._readiness.set("state_restored", not waiting)
        log.info(
            "restore done partitions=%s streams=%d seconds=%.3f",
            sorted(pending),
            sum(len(p.states) for p in restored),
            time.monotonic() - started,
        )

    def _load(self, part: PartitionRestore) -> None:
        """One partition's restored states into the store."""
        try:
            self._store.load_many(list(part.states.items()), now=time.time())
        except StateError as exc:
            raise StateError(
                f"changelog {self._reader.topic} partition {part.partition}: {exc}; the "
                "record is malformed: point kafka.changelog_topic at a topic this service "
                "writes (records of other models are re-warmed, not refused)"
            ) from exc
        self.streams.note_restored(part.states, part.partition)
        label = str(part.partition)
        self._metrics.restore_seconds.labels(partition=label).set(part.seconds)
        self._metrics.restored_streams.labels(partition=label).set(len(part.states))
        log.info(
            "state restored topic=%s partition=%d streams=%d records=%d tombstones=%d seconds=%.3f",
            self._reader.topic,
            part.partition,
            len(part.states),
            part.records,
            part.tombstones,
            part.seconds,
        )
