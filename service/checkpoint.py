"""The checkpoint: what makes processed readings durable, in one order on every path.

Every checkpoint runs these steps, in this order and only this order:

    Step 1. flush the forecast producer: every forecast and dead letter of a processed
            record is acknowledged by the broker;
    Step 2. write the states of the streams changed since the last checkpoint (and the
            tombstones of evicted and expired streams) to the changelog, each to its input
            partition's number, and flush it;
    Step 3. commit the input offsets of the processed records.

A failure at a step skips the later ones: an offset is never committed ahead of its
forecasts or of the states that hold its reading, and states not acknowledged are marked
changed again for the next checkpoint. A state written ahead of its offsets is harmless:
after a restart the engine skips the readings it already holds (``applied_offset``).

Three paths run the steps, each marked ``# Step N`` below:

- `Checkpointer.periodic`, every ``kafka.commit_interval``, pipelined so that the loop never
  waits for the changelog's acknowledgements of the states it has just sent: it completes
  the checkpoint begun one interval ago (steps 1, 2 and 3 for the positions taken then) and
  begins the next (step 2's records sent, a slice at a time between micro-batches by
  `send_slice`);
- `Checkpointer.revoke`, in the rebalance callback, for the partitions being revoked: steps
  1 and 2, then the client commits the offsets it returns (step 3) before they go;
- `Checkpointer.final`, at shutdown: the three steps at once.

A failure raises `CheckpointError` (or `GroupChangingError` when a rebalance refused the
commit, which the revoke commits instead); the service pauses consumption and retries.

The forecast scores of the processed readings (`service.accuracy.ScoreLedger`) follow the
states that hold them (a state record marks each outstanding forecast's steps scored): taken
when a checkpoint takes its positions and encodes its states, counted when the changelog
has acknowledged those states (step 2), carried to the next checkpoint when it fails, and
counted or dropped with a revoke's partitions as its step 2 goes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from service.accuracy import ScoreLedger
from service.config import KafkaSettings
from service.core.state import StateStore
from service.errors import (
    ChangelogError,
    CheckpointError,
    GroupChangingError,
    SinkError,
    TransportError,
)
from service.metrics import ServiceMetrics
from service.offsets import Offsets
from service.transport import Sink, StateWriter

__all__ = ["Checkpointer", "Owners"]

log = logging.getLogger(__name__)

_FIRST_BACKOFF = 0.5
# A begun checkpoint hands its states to the changelog producer over this many loop
# iterations (at least _MIN_SLICE and at most _MAX_SLICE a time), so that no micro-batch
# waits for all of them (docs/benchmarks.md has what one record costs each client). Under
# light load a slice holds up the next fetch: 64 states of a few KB are a few milliseconds
# of kafka-python's loop (256 were 9-17 ms), and one produce request of a few hundred KB.
_SLICES = 16
_MIN_SLICE = 64
_MAX_SLICE = 1024
# How much longer one checkpoint interval may be than the one before (`_next_interval`).
_MAX_INTERVAL_GROWTH = 4.0


class Owners(Protocol):
    """Which input partition each stream lives on (`service.lifecycle.PartitionLifecycle`)."""

    def partitions_of(self, stream_ids: Iterable[str]) -> list[int]:
        """The input partition of each stream, -1 for a stream of no partition held."""
        ...

    def holds(self, partition: int) -> bool:
        """Whether the partition's streams are this member's to write."""
        ...

    def restoring(self, partitions: set[int]) -> set[int]:
        """Those of `partitions` still waiting for their restore (nothing of theirs in memory)."""
        ...


@dataclass(frozen=True, slots=True)
class _Sent:
    """Changelog records sent and not yet known to be acknowledged."""

    ids: list[str]  # streams whose states were sent (and marked unchanged)
    tombstones: dict[str, int]  # tombstones sent: stream id -> partition


@dataclass(slots=True)
class _Pending:
    """A periodic checkpoint begun and not yet completed."""

    offsets: dict[int, int]  # the positions processed when its states were taken
    sent: _Sent | None


@dataclass(slots=True)
class _Queued:
    """Changelog records of a begun checkpoint not yet handed to the producer."""

    partitions: list[int]
    keys: list[str]
    values: list[bytes | None]
    next: int  # index of the first record not sent
    step: int  # records a slice

    def drop(self, partitions: set[int]) -> None:
        """Forget the records of `partitions` not sent yet."""
        keep = [i for i in range(self.next, len(self.keys)) if self.partitions[i] not in partitions]
        self.partitions = [self.partitions[i] for i in keep]
        self.keys = [self.keys[i] for i in keep]
        self.values = [self.values[i] for i in keep]
        self.next = 0


class Checkpointer:
    """Runs the checkpoint's steps over a sink, a changelog writer and the input offsets.

    It owns what lies between two checkpoints: the tombstones due, the checkpoint begun and
    not completed, its records not sent yet, and when the next one is due.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        sink: Sink,
        changelog: StateWriter,
        offsets: Offsets,
        store: StateStore,
        owners: Owners,
        metrics: ServiceMetrics,
        ledgers: Iterable[ScoreLedger] = (),
    ) -> None:
        self._settings = settings
        self.ledgers = ledgers  # read at each use: a model swap adds one
        self._sink = sink
        self._changelog = changelog
        self._offsets = offsets
        self._store = store
        self._owners = owners
        self._metrics = metrics
        # evicted or expired streams awaiting their tombstone: stream id -> partition
        self.tombstones: dict[str, int] = {}
        self._pending: _Pending | None = None
        self._queued: _Queued | None = None
        # a checkpoint failed: the next one first waits for what the producers still hold
        self._unsettled = False
        # the final checkpoint failed: a revoke while leaving does not wait for the broker
        self._gave_up = False
        # what encoding and sending all of the last begun checkpoint's records costs the
        # loop, in seconds, and the interval in force (see `_next_interval`)
        self._write_cost = 0.0
        self._interval = settings.commit_interval
        self._backoff = _FIRST_BACKOFF
        self.due_at = time.monotonic() + self._next_interval()

    # -- what the loop tells it -------------------------------------------------------------

    def tombstone(self, stream_ids: list[str]) -> None:
        """Streams the engine dropped (capacity, TTL): tombstones go out with the next
        checkpoint."""
        for sid, partition in zip(stream_ids, self._owners.partitions_of(stream_ids), strict=True):
            if partition >= 0:
                self.tombstones[sid] = partition

    def partitions_gone(self, partitions: set[int]) -> None:
        """Partitions that moved to another member: their tombstones are the new owner's."""
        for sid in [s for s, p in self.tombstones.items() if p in partitions]:
            del self.tombstones[sid]

    @property
    def backoff(self) -> float:
        """Seconds before the next attempt after a failure (doubling up to the maximum)."""
        return self._backoff

    @property
    def writing(self) -> bool:
        """Whether a begun checkpoint has records left for `send_slice`."""
        return self._queued is not None

    # -- the periodic checkpoint ------------------------------------------------------------

    def periodic(self) -> None:
        """Complete the checkpoint begun one interval ago, then begin the next.

        Completing it: send what `send_slice` has not sent of its records yet, then steps
        1, 2 (flush the changelog: its records are acknowledged by now as a rule) and 3 for
        the positions taken when its states were. Beginning the next: take the positions,
        encode the states changed since, send the tombstones and the first slice of the
        states, and go back to processing. Offsets are committed one interval later than
        they would be unpipelined; every committed offset's forecasts and states were
        acknowledged first.

        Raises `CheckpointError` (the states of the checkpoint being completed are marked
        changed again, nothing is committed) or `GroupChangingError`.
        """
        timeout = self._settings.checkpoint_timeout
        started = time.monotonic()
        try:
            self._settle(timeout)
            pending, self._pending = self._pending, None
            if pending is not None:
                self._complete(pending, timeout)
            positions = self._offsets.positions()
            for ledger in self.ledgers:
                ledger.begin()
            # Step 2 of the next checkpoint, begun: its records go out a slice at a time
            sent = self._send_changelog(None, spread=True)
            self._pending = _Pending(positions, sent)
        except GroupChangingError:
            # Not a broker problem: the next poll completes the rebalance, whose revoke
            # commits; until then the commit waits.
            self._metrics.checkpoints.labels(outcome="failed").inc()
            self.due_at = time.monotonic() + self._next_interval()
            raise
        except (SinkError, ChangelogError, TransportError) as exc:
            raise self._failed(exc) from exc
        self._metrics.checkpoint_seconds.observe(time.monotonic() - started)
        self._backoff = _FIRST_BACKOFF
        self.due_at = time.monotonic() + self._next_interval()

    def _settle(self, timeout: float) -> None:
        """After a failure the producers may still hold that checkpoint's records (for as
        long as their delivery timeout): send nothing new until the broker has taken them,
        or every retry would queue all the changed states once more."""
        if self._unsettled:
            self._sink.flush(timeout)
            self._changelog.flush(timeout)
            self._unsettled = False

    def _complete(self, pending: _Pending, timeout: float) -> None:
        """Steps 1 to 3 of a begun checkpoint."""
        try:
            self._send_queued()  # the rest of step 2's records
            # Step 1. flush the forecast producer
            self._sink.flush(timeout)
            # Step 2. flush the changelog
            self._changelog.flush(timeout)
        except (SinkError, ChangelogError):
            self._abandon(pending)
            raise
        self._acknowledged(pending.sent)
        for ledger in self.ledgers:
            ledger.commit()  # their states are on the changelog
        # Step 3. commit the positions taken with the states
        self._offsets.commit(timeout, pending.offsets)
        self._metrics.checkpoints.labels(outcome="ok").inc()

    def send_slice(self) -> None:
        """The loop's share of a begun checkpoint: its next slice of records (step 2).

        Raises `CheckpointError` when the changelog refuses them: the checkpoint is
        abandoned, its states marked changed again.
        """
        queued = self._queued
        if queued is None:
            return
        try:
            self._send_queued(queued.step)
        except ChangelogError as exc:
            pending, self._pending = self._pending, None
            if pending is not None:
                self._abandon(pending)
            self._queued = None
            raise self._failed(exc) from exc

    def _failed(self, exc: Exception) -> CheckpointError:
        """A checkpoint the broker did not take: retried after a backoff."""
        self._unsettled = True
        self._metrics.checkpoints.labels(outcome="failed").inc()
        retry_in = self._backoff
        self.due_at = time.monotonic() + retry_in
        self._backoff = min(retry_in * 2, self._settings.reconnect_backoff_max)
        return CheckpointError(f"checkpoint failed: {exc!r}", retry_in=retry_in)

    def _next_interval(self) -> float:
        """Seconds until the next periodic checkpoint: ``kafka.commit_interval``, or, when
        the checkpoint just begun will take the loop more than ``kafka.changelog_budget`` of
        that to encode and send its states, long enough for it to take no more (at most
        ``kafka.commit_interval_max``). The interval grows at most fourfold from one
        checkpoint to the next, so that one slow send (a metadata fetch, a stalled broker)
        does not put the commits off for a minute; it falls back at once when the writes
        get cheap.

        A checkpoint writes each changed stream once, so its cost grows with the streams
        changed since the last one and stops growing once all have changed: with many
        streams a longer interval buys throughput where a shorter one would write the same
        streams more often. The price is that of any longer interval: more readings
        replayed after a crash.
        """
        k = self._settings
        interval = min(
            max(k.commit_interval, self._write_cost / k.changelog_budget),
            max(k.commit_interval, k.commit_interval_max),
            _MAX_INTERVAL_GROWTH * self._interval,
        )
        self._interval = interval
        self._metrics.checkpoint_interval.set(interval)
        return interval

    # -- the revoke and the final checkpoint -------------------------------------------------

    def revoke(self, partitions: set[int]) -> dict[int, int]:
        """Steps 1 and 2 for partitions being revoked; return their offsets for the client
        to commit (step 3), or none when a step failed.

        The records of a begun checkpoint still queued go out first (step 2 sends them
        before anything else); only then are the revoked partitions taken out of it.
        """
        offsets = None if self._gave_up else self._revoke_steps(partitions)
        for ledger in self.ledgers:
            ledger.settle(partitions, committed=offsets is not None)
        self._forget_pending(partitions)
        return offsets or {}

    def _revoke_steps(self, partitions: set[int]) -> dict[int, int] | None:
        timeout = self._settings.checkpoint_timeout
        try:
            # Step 1. flush the forecast producer
            self._sink.flush(timeout)
            # Step 2. write the revoked partitions' changed states (a partition still
            # waiting for its restore has nothing of its own in memory yet)
            self._write_changelog(partitions - self._owners.restoring(partitions), timeout)
        except (SinkError, ChangelogError) as exc:
            self._metrics.checkpoints.labels(outcome="failed").inc()
            log.warning(
                "checkpoint on revoke failed, offsets not committed partitions=%s error=%r",
                sorted(partitions),
                exc,
            )
            return None
        # Step 3. is the client's: it commits these before the partitions go
        return self._offsets.revoked(partitions)

    def lost(self, partitions: set[int]) -> None:
        """Partitions lost: nothing more of theirs is written, committed or counted."""
        for ledger in self.ledgers:
            ledger.settle(partitions, committed=False)
        self._forget_pending(partitions)

    def _forget_pending(self, partitions: set[int]) -> None:
        if self._pending is not None:
            # committed by the revoke itself, or now another member's to commit
            for p in partitions:
                self._pending.offsets.pop(p, None)
        if self._queued is not None:
            # sent by the revoke checkpoint; if that failed (or the partitions are lost),
            # they must not reach the changelog after the next owner's records
            self._queued.drop(partitions)

    def final(self, timeout: float) -> None:
        """The shutdown's checkpoint: everything processed made durable, at once.

        Raises `CheckpointError` when a step failed (then a revoke while leaving the group
        commits nothing either), or `GroupChangingError`.
        """
        started = time.monotonic()
        pending, self._pending = self._pending, None
        for ledger in self.ledgers:
            ledger.begin()  # everything processed, the begun checkpoint's included
        try:
            # Step 1. flush the forecast producer
            self._sink.flush(timeout)
            # Step 2. write the changed states and the tombstones to the changelog, flush it
            self._write_changelog(None, timeout)
        except (SinkError, ChangelogError) as exc:
            if pending is not None:
                self._abandon(pending)
            self._reopen_scores()
            self._gave_up = True
            raise CheckpointError(f"final checkpoint failed: {exc!r}", retry_in=0.0) from exc
        if pending is not None:
            self._acknowledged(pending.sent)
        for ledger in self.ledgers:
            ledger.commit()  # their states are on the changelog
        # Step 3. commit the input offsets
        try:
            self._offsets.commit(timeout)
        except GroupChangingError:
            raise
        except TransportError as exc:
            self._gave_up = True
            raise CheckpointError(f"final commit failed: {exc!r}", retry_in=0.0) from exc
        self._metrics.checkpoint_seconds.observe(time.monotonic() - started)
        self._metrics.checkpoints.labels(outcome="ok").inc()

    # -- step 2, the changelog ---------------------------------------------------------------

    def _write_changelog(self, partitions: set[int] | None, timeout: float) -> None:
        """Step 2 for `partitions` (None: all), waiting for the changelog's acknowledgement
        (of these records and of any sent before)."""
        sent = self._send_changelog(partitions)
        try:
            self._changelog.flush(timeout)
        except ChangelogError:
            self._unsend(sent)
            raise
        self._acknowledged(sent)

    def _send_changelog(self, partitions: set[int] | None, *, spread: bool = False) -> _Sent | None:
        """Send the tombstones, then the changed streams' states, of `partitions` (None:
        all), without waiting for acknowledgements. The streams are marked unchanged and the
        tombstones forgotten at once; `_unsend` undoes that when the records turn out not
        acknowledged. With `spread`, only the tombstones and the first slice of the states
        go now, the rest with `send_slice`, and `_write_cost` is what all of them will have
        cost the loop, the rest sent at the first slice's pace.

        Records queued by an earlier call are sent first, so that a stream's records reach
        the changelog in the order its states were taken."""
        self._send_queued()
        store = self._store
        dirty = list(store.dirty_ids())
        wanted = partitions
        ids, parts = [], []
        for sid, p in zip(dirty, self._owners.partitions_of(dirty), strict=True):
            if p >= 0 and (wanted is None or p in wanted):
                ids.append(sid)
                parts.append(p)
        tombs = {s: p for s, p in self.tombstones.items() if wanted is None or p in wanted}
        metrics = self._metrics
        if not ids and not tombs:
            metrics.checkpoint_streams.set(0)
            metrics.checkpoint_bytes.set(0)
            if spread:
                self._write_cost = 0.0
            return None
        keys = list(tombs) + ids
        targets = list(tombs.values()) + parts
        values: list[bytes | None] = [None] * len(tombs)
        began = time.monotonic()
        values += store.dump_many(ids)
        encoded = time.monotonic()
        now, step = len(keys), 0
        if spread:
            step = max(_MIN_SLICE, min(_MAX_SLICE, -(-len(ids) // _SLICES)))
            now = min(now, len(tombs) + step)
        size = self._changelog.send(targets[:now], keys[:now], values[:now])
        sending = time.monotonic() - encoded
        metrics.changelog_write_seconds.inc(sending + (encoded - began))
        if spread:
            self._write_cost = (encoded - began) + sending * len(keys) / now
        if now < len(keys):
            self._queued = _Queued(targets, keys, values, now, step)
        store.clear_dirty(ids)
        for sid in tombs:
            # a stream evicted and back again has its state written after its tombstone
            del self.tombstones[sid]
        metrics.checkpoint_streams.set(len(keys))
        metrics.checkpoint_bytes.set(size)
        return _Sent(ids, tombs)

    def _send_queued(self, limit: int | None = None) -> None:
        """Hand queued changelog records to the producer: `limit` of them, or all."""
        queued = self._queued
        if queued is None:
            return
        began = time.monotonic()
        start = queued.next
        end = len(queued.keys) if limit is None else min(len(queued.keys), start + limit)
        size = self._changelog.send(
            queued.partitions[start:end], queued.keys[start:end], queued.values[start:end]
        )
        self._metrics.changelog_write_seconds.inc(time.monotonic() - began)
        queued.next = end
        self._metrics.checkpoint_bytes.inc(size)
        if end >= len(queued.keys):
            self._queued = None

    def _abandon(self, pending: _Pending) -> None:
        """A begun checkpoint that will not complete: its states are due again, and its
        scores wait for the next."""
        self._queued = None
        self._unsend(pending.sent)
        self._reopen_scores()

    def _reopen_scores(self) -> None:
        for ledger in self.ledgers:
            ledger.reopen()

    def _acknowledged(self, sent: _Sent | None) -> None:
        if sent is not None:
            records = self._metrics.changelog_records
            records.labels(kind="state").inc(len(sent.ids))
            records.labels(kind="tombstone").inc(len(sent.tombstones))

    def _unsend(self, sent: _Sent | None) -> None:
        """Records of `sent` may not have reached the changelog: their streams are changed
        again and their tombstones due again (unless the stream is back in the store, whose
        state is then written instead)."""
        if sent is None:
            return
        store = self._store
        store.mark_dirty(sent.ids)
        for sid, partition in sent.tombstones.items():
            if sid not in store and self._owners.holds(partition):
                self.tombstones.setdefault(sid, partition)
