"""The service wiring: poll -> decode -> engine -> produce -> checkpoint.

The checkpoint (every ``commit_interval``, on revoke and at shutdown) makes the state
durable before the offsets: forecasts flushed, changed stream states written to the
changelog, offsets committed (see `Service.checkpoint`). A newly assigned partition is
paused until its streams are restored from its changelog partition, so no reading of it is
processed against a missing state; readings already in a restored state are skipped by the
engine (``applied_offset``). The resulting guarantees are in docs/guarantees.md.

`Service(settings).run()` blocks until `stop()` is called (from a signal handler or another
thread), then finishes the batch in hand, checkpoints, leaves the group and returns 0 (1 when
the final checkpoint could not complete). While the broker is unreachable, at start or later,
it retries with exponential backoff, reports not-ready on ``/readyz`` and logs each attempt;
it neither exits nor spins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from service.config import ServiceSettings
from service.core.engine import EngineConfig, StreamEngine
from service.core.model import OnnxStepModel
from service.core.readings import DropReason, ReadingBatch, Reject
from service.droplog import DropLog
from service.errors import (
    ChangelogError,
    ConfigError,
    GroupChangingError,
    SensorcastError,
    SinkError,
    StateError,
    TransportError,
)
from service.http import HttpServer, Readiness
from service.kafka.codec import (
    HEADER_REASON,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    ForecastEncoder,
    RawRecord,
    ReadingDecoder,
    dead_letter_headers,
    fit_dead_letter,
    max_future_seconds,
)
from service.kafka.connect import check_client, connect
from service.kafka.transport import Sink, Source, StateReader, StateWriter
from service.metrics import ServiceMetrics
from service.partitions import PartitionStreams
from service.registry import Registry

__all__ = ["CRASH_EXIT_STATUS", "Service"]

log = logging.getLogger(__name__)

_FIRST_BACKOFF = 0.5
# Exit status of a process stopped by the fault-injection setting ``debug.crash_at``.
CRASH_EXIT_STATUS = 70


@dataclass(frozen=True, slots=True)
class _Sent:
    """Changelog records sent and not yet known to be acknowledged."""

    ids: list[str]  # streams whose states were sent (and marked unchanged)
    tombstones: dict[str, int]  # tombstones sent: stream id -> partition


@dataclass(slots=True)
class _Pending:
    """A periodic checkpoint begun and not yet completed (see `Service._checkpoint_step`)."""

    offsets: dict[int, int]  # the source's positions when its states were sent
    sent: _Sent | None


@dataclass(slots=True)
class _Queued:
    """Changelog records of a begun checkpoint not yet handed to the producer: the loop
    sends them `step` at a time between micro-batches (`Service._send_queued`)."""

    partitions: list[int]
    keys: list[str]
    values: list[bytes | None]
    next: int  # index of the first record not sent
    step: int

    def drop(self, partitions: set[int]) -> None:
        """Forget the records of `partitions` not sent yet."""
        keep = [i for i in range(self.next, len(self.keys)) if self.partitions[i] not in partitions]
        self.partitions = [self.partitions[i] for i in keep]
        self.keys = [self.keys[i] for i in keep]
        self.values = [self.values[i] for i in keep]
        self.next = 0


# A begun checkpoint hands its states to the changelog producer over this many loop
# iterations (at least _MIN_SLICE and at most _MAX_SLICE a time), so that no micro-batch
# waits for all of them: kafka-python takes ~17 us of the loop per record, 170 ms for 10,000
# streams at once, and 17 ms for the largest slice.
_SLICES = 16
_MIN_SLICE = 256
_MAX_SLICE = 1024
# How much longer one checkpoint interval may be than the one before (`_checkpoint_interval`).
_MAX_INTERVAL_GROWTH = 4.0


class Service:
    """One member of the consumer group, serving one model."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.readiness = Readiness(self.metrics)
        self._stop = threading.Event()
        self._started = threading.Event()
        self._http: HttpServer | None = None
        self._source: Source | None = None
        self._sink: Sink | None = None
        self._engine: StreamEngine | None = None
        self._encoder: ForecastEncoder | None = None
        self._decoder: ReadingDecoder | None = None
        self._streams = PartitionStreams()
        self._drop_log = DropLog(settings.log.drop_interval)
        self._backoff = _FIRST_BACKOFF
        self._next_checkpoint = 0.0
        self._paused = False
        self._final_checkpoint_failed = False
        self._mirror_partitions = False
        self._changelog: StateWriter | None = None
        self._restorer: StateReader | None = None
        # Partitions whose streams are in the store (or being restored into it), and those
        # paused until restored. Both change in the rebalance callbacks (the I/O thread, while
        # the poll loop waits in `poll`) and are read by the loop after the poll.
        self._held: set[int] = set()
        self._to_restore: set[int] = set()
        self._restore_lock = threading.Lock()
        self._restore_retry_at = 0.0
        self._restore_backoff = _FIRST_BACKOFF
        # evicted or expired streams awaiting their tombstone: stream id -> partition
        self._tombstones: dict[str, int] = {}
        # the periodic checkpoint whose states are on their way to the changelog, and those
        # of its records still to be sent
        self._pending: _Pending | None = None
        self._queued: _Queued | None = None
        # a checkpoint failed: the next one first waits for what the producers still hold
        self._unsettled = False
        # what encoding and sending all of the last begun periodic checkpoint's records
        # costs the loop, in seconds, and the interval in force (see `_checkpoint_interval`)
        self._write_cost = 0.0
        self._interval = settings.kafka.commit_interval
        self._crash_at = settings.debug.crash_at

    # -- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the poll loop to finish the batch in hand and shut down (thread- and signal-safe)."""
        self._stop.set()

    @property
    def http_port(self) -> int | None:
        """The bound HTTP port once the server is up (useful with ``http.port = 0``)."""
        self._started.wait()
        return self._http.port if self._http is not None else None

    @property
    def engine(self) -> StreamEngine | None:
        return self._engine

    def run(self) -> int:
        """Serve until stopped; return the process exit status."""
        try:
            check_client(self.settings.kafka)
            self._start_http()
            self._load_model()
            if not self._connect():
                return 0  # stopped before the broker was ever reached
            self._loop()
            return self._shutdown()
        except SensorcastError:
            raise  # an operator's error, reported by the caller in one line
        except Exception:
            log.exception("service failed; offsets since the last checkpoint are not committed")
            raise
        finally:
            self.readiness.set("partitions_assigned", False)
            if self._http is not None:
                self._http.stop()
            self._started.set()

    # -- start-up --------------------------------------------------------------------------

    def _start_http(self) -> None:
        http = self.settings.http
        if http.enabled:
            try:
                server = HttpServer(http.host, http.port, self.metrics, self.readiness)
            except OSError as exc:
                raise ConfigError(
                    f"http.port: cannot listen on {http.host}:{http.port} ({exc.strerror}); "
                    "choose another port with SENSORCAST_HTTP__PORT or --http-port"
                ) from exc
            self._http = server.start()
        self._started.set()

    def _load_model(self) -> None:
        m = self.settings.model
        loaded = Registry(m.registry).load(m.name, m.version)
        model = OnnxStepModel.from_loaded(
            loaded, intra_op_threads=m.intra_op_threads, spinning=m.spinning
        )
        e = self.settings.engine
        config = EngineConfig(
            max_gap_periods=e.max_gap_periods,
            gap_policy=e.gap_policy,
            impute=e.impute,
            ttl_seconds=e.ttl_seconds,
            max_streams=e.max_streams,
            state_dtype=e.state_dtype,
            out_of_range=e.out_of_range,
            out_of_range_margin=e.out_of_range_margin,
            clock_recovery=e.clock_recovery,
        )
        self._engine = StreamEngine(model, config)
        card = loaded.card
        self._encoder = ForecastEncoder(card)
        k = self.settings.kafka
        self._decoder = ReadingDecoder(
            max_message_bytes=k.max_message_bytes,
            max_future_seconds=max_future_seconds(k, card),
            partition_of=self._streams.partition_of,
        )
        if card.feature_ranges is None and e.out_of_range != "accept":
            log.warning(
                "model card has no feature_ranges: readings are not checked against the "
                "training range (engine.out_of_range=%s has no effect); re-export the model",
                e.out_of_range,
            )
        self.metrics.set_model(card.name, card.version, card.kind)
        self.readiness.set("model_loaded", True)
        log.info(
            "model loaded model=%s kind=%s features=%d horizon=%d dir=%s",
            card.ref,
            card.kind,
            card.n_features,
            card.horizon,
            loaded.ref.directory,
        )

    def _connect(self) -> bool:
        """Check the topics and open the consumer and producer, retrying while the broker is
        unreachable. False when stopped first."""
        k = self.settings.kafka
        delay = _FIRST_BACKOFF
        while not self._stop.is_set():
            try:
                transport = connect(k, self)
            except TransportError as exc:
                self._set_reachable(False)
                log.warning(
                    "broker unreachable client=%s bootstrap=%s error=%r retry_in=%.1fs",
                    k.client,
                    k.bootstrap_servers,
                    exc,
                    delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, k.reconnect_backoff_max)
                continue
            self._source, self._sink = transport.source, transport.sink
            self._changelog = transport.changelog_writer
            self._restorer = transport.changelog_reader
            self._mirror_partitions = transport.mirror_partitions
            self._set_reachable(True)
            log.info(
                "connected client=%s bootstrap=%s input=%s partitions=%d output=%s "
                "dead_letters=%s group=%s",
                k.client,
                k.bootstrap_servers,
                k.input_topic,
                transport.partitions[k.input_topic],
                k.output_topic,
                k.dead_letter_topic,
                k.group_id,
            )
            return True
        return False

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        assert self._source is not None
        source = self._source
        self._next_checkpoint = time.monotonic() + self._checkpoint_interval()
        while not self._stop.is_set():
            self.metrics.poll_iterations.inc()
            try:
                records = source.poll()
            except TransportError as exc:
                self._set_reachable(False)
                log.warning("poll failed error=%r", exc)
                self._stop.wait(self._backoff)
                continue
            self._apply_moves()
            if records:
                self._process(records)
            self._dead_letter_events()
            if self._queued is not None:
                self._send_queued_slice()
            if time.monotonic() >= self._next_checkpoint:
                self._periodic_checkpoint()

    def _process(self, records: Sequence[RawRecord]) -> None:
        assert self._engine is not None and self._sink is not None and self._encoder is not None
        assert self._decoder is not None
        received = time.time()
        decoded = self._decoder.decode_columns(
            records, received=received, values=self._engine.values
        )
        batch = decoded.batch
        result = self._engine.process_batch(batch, now=received)
        forecasts, sink = result.forecasts, self._sink
        messages = self._encoder.encode_batch(forecasts)
        if self._mirror_partitions:
            for stream_id, message, partition in zip(
                forecasts.stream_ids, messages, forecasts.partitions.tolist(), strict=True
            ):
                sink.send_forecast(stream_id, message, partition)
        else:
            for stream_id, message in zip(forecasts.stream_ids, messages, strict=True):
                sink.send_forecast(stream_id, message)
        self._streams.note_columns(batch.stream_ids, batch.partitions.tolist())
        rejects = decoded.rejects + result.rejects
        if rejects:
            self._dead_letter(rejects, records)
        if result.drops:
            self._report_drops(batch, result.drops, records)
        handed = time.time()
        self.metrics.record_batch(
            len(records), result, handed - received, decoded.ages(forecasts, handed)
        )
        self._forget(result.evicted)
        self._forget(result.expired)

    def _forget(self, gone: list[str]) -> None:
        """Streams the engine dropped (capacity, TTL): their tombstones go out with the next
        checkpoint."""
        if not gone:
            return
        for sid, partition in zip(gone, self._streams.partitions_of(gone), strict=True):
            if partition >= 0:
                self._tombstones[sid] = partition
        self._streams.forget(gone)

    def _dead_letter(self, rejects: list[Reject], records: Sequence[RawRecord]) -> None:
        by_position = {(r.partition, r.offset): r for r in records}
        for reject in rejects:
            record = by_position[(reject.partition, reject.offset)]
            self.metrics.rejects.labels(reason=str(reject.reason)).inc()
            self._send_dead_letter(record, str(reject.reason), reject.detail)

    def _send_dead_letter(self, record: RawRecord, reason: str, detail: str) -> None:
        """Copy `record` to the dead-letter topic (cut to ``kafka.dead_letter_max_bytes``
        when it is larger), with a log line; the sink never raises for the record itself."""
        assert self._sink is not None
        letter = fit_dead_letter(
            record.key,
            record.value,
            dead_letter_headers(reason, detail, record.topic, record.partition, record.offset),
            self.settings.kafka.dead_letter_max_bytes,
        )
        self._sink.send_dead_letter(letter.key, letter.value, letter.headers)
        self.metrics.dead_letters.inc()
        if letter.truncated:
            self.metrics.dead_letter_truncations.inc()
        log.warning(
            "dead letter reason=%s topic=%s partition=%d offset=%d bytes=%d%s detail=%s",
            reason,
            record.topic,
            record.partition,
            record.offset,
            len(record.key or b"") + len(record.value or b""),
            " truncated" if letter.truncated else "",
            detail,
        )

    def _dead_letter_events(self) -> None:
        """Count and log the dead letters the broker refused for good (see
        `service.delivery`)."""
        assert self._sink is not None
        for event in self._sink.take_dead_letter_events():
            where = {name: value.decode("utf-8", "replace") for name, value in event.headers}
            if event.outcome == "shrunk":
                counter, level = self.metrics.dead_letter_truncations, logging.WARNING
                what = "dead letter refused, sending it truncated"
            else:
                counter, level = self.metrics.dead_letter_failures, logging.ERROR
                what = "dead letter lost: refused even without its value"
            counter.inc()
            log.log(
                level,
                "%s reason=%s partition=%s offset=%s error=%s",
                what,
                where.get(HEADER_REASON, "?"),
                where.get(HEADER_SOURCE_PARTITION, "?"),
                where.get(HEADER_SOURCE_OFFSET, "?"),
                event.error,
            )

    def _report_drops(
        self,
        batch: ReadingBatch,
        drops: list[tuple[int, DropReason]],
        records: Sequence[RawRecord],
    ) -> None:
        """Log dropped readings, one line per reason when due (see `DropLog`), and, with
        ``kafka.dead_letter_late``, copy the late and duplicate ones to the dead-letter topic."""
        rows_of: dict[DropReason, list[int]] = {}
        for row, reason in drops:
            rows_of.setdefault(reason, []).append(row)
        copy_late = self.settings.kafka.dead_letter_late
        by_position = {(r.partition, r.offset): r for r in records} if copy_late else {}
        for reason, rows in rows_of.items():
            if copy_late and reason is not DropReason.ALREADY_APPLIED:
                for row in rows:
                    record = by_position[(int(batch.partitions[row]), int(batch.offsets[row]))]
                    self._send_dead_letter(
                        record, str(reason), self._drop_detail(batch, row, reason)
                    )
            if self._drop_log.due(reason, len(rows)):
                row = rows[0]
                self._drop_log.log(
                    reason,
                    batch.stream_ids[row],
                    int(batch.partitions[row]),
                    int(batch.offsets[row]),
                    self._drop_detail(batch, row, reason),
                )

    def _drop_detail(self, batch: ReadingBatch, row: int, reason: DropReason) -> str:
        """Why `row` of `batch` was dropped, against its stream's state now."""
        assert self._engine is not None
        if reason is DropReason.ALREADY_APPLIED:
            return f"offset {int(batch.offsets[row])} is already in the stream's state"
        info = self._engine.store.info(batch.stream_ids[row])
        last_ts = info.last_ts if info is not None else float("nan")
        return f"ts {float(batch.ts[row]):.3f} is not after the stream's last applied {last_ts:.3f}"

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint(self, timeout: float | None = None) -> None:
        """Make everything processed so far durable, in this order and only this order:

        1. flush the forecast producer: every forecast and dead letter of a processed record
           is acknowledged by the broker;
        2. write the states of the streams changed since the last checkpoint (and tombstones
           of evicted and expired streams) to the changelog, each to its input partition's
           number, and flush it (with the records of a pipelined checkpoint still in flight);
        3. commit the input offsets of the processed records.

        A failure at a step raises and skips the later ones: an offset is never committed
        ahead of its forecasts or of the states that hold its reading, and states not
        acknowledged are marked changed again for the next checkpoint. A state written ahead
        of its offsets is harmless: after a restart the engine skips the readings it already
        holds (``applied_offset``). This is the shutdown's checkpoint; the periodic one runs
        the same steps pipelined (`_checkpoint_step`). On a revoke the same steps run inside
        the rebalance callback for the revoked partitions: `flush_before_revoke` (1 and 2),
        then the source commits their offsets (3).
        """
        assert self._sink is not None and self._source is not None
        if timeout is None:
            timeout = self.settings.kafka.checkpoint_timeout
        started = time.monotonic()
        armed = self._crash_at is not None and self._has_state_to_write()
        pending, self._pending = self._pending, None
        try:
            # 1. flush the forecast producer
            self._sink.flush(timeout)
            self._maybe_crash("after_flush", armed)
            # 2. write the changed states and the tombstones to the changelog, and flush it
            self._write_changelog(None, timeout, crash_midway=armed)
        except (SinkError, ChangelogError):
            if pending is not None:
                self._abandon(pending)
            raise
        if pending is not None:
            self._acknowledged(pending.sent)
        self._maybe_crash("after_changelog", armed)
        # 3. commit the input offsets
        self._source.commit(timeout_ms=int(timeout * 1000))
        self._maybe_crash("after_commit", armed)
        self.metrics.checkpoint_seconds.observe(time.monotonic() - started)
        self.metrics.checkpoints.labels(outcome="ok").inc()

    def _checkpoint_step(self, timeout: float) -> None:
        """The periodic checkpoint, pipelined so that the loop never waits for the
        changelog's acknowledgements of the states it has just sent:

        - complete the checkpoint begun one interval ago: send what the loop has not sent
          of its states yet, flush the forecast producer, flush the changelog (its states
          are acknowledged by now as a rule), commit the input positions taken when they
          were encoded;
        - begin the next: take the source's positions, encode the states changed since,
          send the tombstones and the first of the states (1/16th), and go on processing;
          the loop sends the rest a slice at a time between micro-batches, so that no batch
          of readings waits for the whole checkpoint.

        The order of `checkpoint` holds for every committed offset: its forecasts and the
        states holding its readings were acknowledged first. The price is that offsets are
        committed one interval later. A failure raises; the states of the checkpoint being
        completed are marked changed again, and nothing is committed.
        """
        assert self._sink is not None and self._source is not None
        assert self._changelog is not None
        started = time.monotonic()
        if self._unsettled:
            # After a failure, the producers may still hold that checkpoint's records (for
            # as long as their delivery timeout): send nothing new until the broker has
            # taken them, or every retry would queue all the changed states once more.
            self._sink.flush(timeout)
            self._changelog.flush(timeout)
            self._unsettled = False
        pending, self._pending = self._pending, None
        if pending is not None:
            armed = self._crash_at is not None and pending.sent is not None
            try:
                self._send_queued()
                self._sink.flush(timeout)
                self._maybe_crash("after_flush", armed)
                self._changelog.flush(timeout)
            except (SinkError, ChangelogError):
                self._abandon(pending)
                raise
            self._acknowledged(pending.sent)
            self._maybe_crash("after_changelog", armed)
            self._source.commit(timeout_ms=int(timeout * 1000), offsets=pending.offsets)
            self._maybe_crash("after_commit", armed)
            self.metrics.checkpoints.labels(outcome="ok").inc()
        armed = self._crash_at is not None and self._has_state_to_write()
        positions = self._source.positions()
        sent = self._send_changelog(None, timeout, crash_midway=armed, spread=True)
        self._pending = _Pending(positions, sent)
        self.metrics.checkpoint_seconds.observe(time.monotonic() - started)

    def _has_state_to_write(self) -> bool:
        assert self._engine is not None
        return bool(self._tombstones) or bool(self._engine.store.dirty_ids())

    def _write_changelog(
        self, partitions: set[int] | None, timeout: float, *, crash_midway: bool = False
    ) -> None:
        """Checkpoint step 2 for `partitions` (None: all), waiting for the changelog's
        acknowledgement (of these records and of any sent before)."""
        assert self._changelog is not None
        sent = self._send_changelog(partitions, timeout, crash_midway=crash_midway)
        try:
            self._changelog.flush(timeout)
        except ChangelogError:
            self._unsend(sent)
            raise
        self._acknowledged(sent)

    def _send_changelog(
        self,
        partitions: set[int] | None,
        timeout: float,
        *,
        crash_midway: bool = False,
        spread: bool = False,
    ) -> _Sent | None:
        """Send the tombstones, then the changed streams' states, of `partitions` (None:
        all) to their changelog partitions, without waiting for acknowledgements. The
        streams are marked unchanged and the tombstones forgotten at once; `_unsend` undoes
        that when the records turn out not acknowledged. With `spread`, only the tombstones
        and the first slice of the states are sent now, the rest by `_send_queued_slice`,
        and `_write_cost` is what all of them will have cost the loop, the rest sent at the
        first slice's pace.

        Records queued by an earlier call are sent first, so that a stream's records reach
        the changelog in the order its states were taken."""
        assert self._engine is not None and self._changelog is not None
        self._send_queued()
        store = self._engine.store
        dirty = list(store.dirty_ids())
        owners = self._streams.partitions_of(dirty)
        wanted = partitions
        ids = [
            s
            for s, p in zip(dirty, owners, strict=True)
            if p >= 0 and (wanted is None or p in wanted)
        ]
        parts = [p for p in owners if p >= 0 and (wanted is None or p in wanted)]
        tombs = {s: p for s, p in self._tombstones.items() if wanted is None or p in wanted}
        if not ids and not tombs:
            self.metrics.checkpoint_streams.set(0)
            self.metrics.checkpoint_bytes.set(0)
            if spread:
                self._write_cost = 0.0
            return None
        keys = list(tombs) + ids
        targets = list(tombs.values()) + parts
        values: list[bytes | None] = [None] * len(tombs)
        began = time.monotonic()
        values += store.dump_many(ids)
        encoded = time.monotonic()
        if crash_midway and self._crash_at == "mid_changelog":
            half = max(1, len(keys) // 2)
            self._changelog.send(targets[:half], keys[:half], values[:half])
            self._changelog.flush(timeout)
            self._maybe_crash("mid_changelog", True)
        now, step = len(keys), 0
        if spread:
            step = max(_MIN_SLICE, min(_MAX_SLICE, -(-len(ids) // _SLICES)))
            now = min(now, len(tombs) + step)
        size = self._changelog.send(targets[:now], keys[:now], values[:now])
        sending = time.monotonic() - encoded
        self.metrics.changelog_write_seconds.inc(sending + (encoded - began))
        if spread:
            self._write_cost = (encoded - began) + sending * len(keys) / now
        if now < len(keys):
            self._queued = _Queued(targets, keys, values, now, step)
        store.clear_dirty(ids)
        for sid in tombs:
            # a stream evicted and back again has its state written after its tombstone
            del self._tombstones[sid]
        self.metrics.checkpoint_streams.set(len(keys))
        self.metrics.checkpoint_bytes.set(size)
        return _Sent(ids, tombs)

    def _send_queued(self, limit: int | None = None) -> None:
        """Hand queued changelog records to the producer: `limit` of them, or all."""
        queued = self._queued
        if queued is None:
            return
        assert self._changelog is not None
        began = time.monotonic()
        start = queued.next
        end = len(queued.keys) if limit is None else min(len(queued.keys), start + limit)
        size = self._changelog.send(
            queued.partitions[start:end], queued.keys[start:end], queued.values[start:end]
        )
        self.metrics.changelog_write_seconds.inc(time.monotonic() - began)
        queued.next = end
        self.metrics.checkpoint_bytes.inc(size)
        if end >= len(queued.keys):
            self._queued = None

    def _send_queued_slice(self) -> None:
        """The loop's share of a begun checkpoint: its next slice of records. A failure
        abandons the checkpoint like a failed `_checkpoint_step`."""
        assert self._queued is not None
        try:
            self._send_queued(self._queued.step)
        except ChangelogError as exc:
            pending, self._pending = self._pending, None
            if pending is not None:
                self._abandon(pending)
            self._queued = None
            self._checkpoint_failed(exc)

    def _abandon(self, pending: _Pending) -> None:
        """A begun checkpoint that will not complete: its states are due again."""
        self._queued = None
        self._unsend(pending.sent)

    def _acknowledged(self, sent: _Sent | None) -> None:
        if sent is not None:
            self.metrics.changelog_records.labels(kind="state").inc(len(sent.ids))
            self.metrics.changelog_records.labels(kind="tombstone").inc(len(sent.tombstones))

    def _unsend(self, sent: _Sent | None) -> None:
        """Records of `sent` may not have reached the changelog: their streams are changed
        again and their tombstones due again (unless the stream is back in the store, whose
        state is then written instead)."""
        if sent is None:
            return
        assert self._engine is not None
        store = self._engine.store
        store.mark_dirty(sent.ids)
        owned = self._held
        for sid, partition in sent.tombstones.items():
            if sid not in store and partition in owned:
                self._tombstones.setdefault(sid, partition)

    def _maybe_crash(self, point: str, armed: bool) -> None:
        """The fault-injection setting ``debug.crash_at``: exit at once, as a kill would."""
        if armed and self._crash_at == point:
            log.error("fault injection: exiting at checkpoint point=%s", point)
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            os._exit(CRASH_EXIT_STATUS)

    def _periodic_checkpoint(self) -> None:
        k = self.settings.kafka
        try:
            self._checkpoint_step(k.checkpoint_timeout)
        except GroupChangingError as exc:
            # Not a broker problem: the next poll completes the rebalance, whose revoke
            # callback commits; until then the commit waits.
            self.metrics.checkpoints.labels(outcome="failed").inc()
            log.info("commit deferred while the group rebalances error=%s", exc)
            self._next_checkpoint = time.monotonic() + self._checkpoint_interval()
            return
        except (SinkError, ChangelogError, TransportError) as exc:
            self._checkpoint_failed(exc)
            return
        self._backoff = _FIRST_BACKOFF
        self._set_reachable(True)
        self._pause(False)
        self._expire_idle()
        self._update_gauges()
        self._next_checkpoint = time.monotonic() + self._checkpoint_interval()

    def _checkpoint_interval(self) -> float:
        """Seconds until the next periodic checkpoint: ``kafka.commit_interval``, or, when
        the checkpoint just begun will take the loop more than ``kafka.changelog_budget`` of
        that to encode and send its states, long enough for it to take no more (at most
        ``kafka.commit_interval_max``). The interval grows at most fourfold from one checkpoint
        to the next (5 s to 20 s, what 100,000 streams on kafka-python need, in one step), so
        that one slow send (a metadata fetch, a stalled broker) does not put the commits off
        for a minute; it falls back at once when the writes get cheap.

        A checkpoint writes each changed stream once, so its cost grows with the streams
        changed since the last one and stops growing once all have changed: with many
        streams (100,000 on kafka-python, ~20 us a state, take ~2 s) a longer interval buys
        throughput where a shorter one would write the same streams more often. The price
        is that of any longer interval: more readings replayed after a crash.
        """
        k = self.settings.kafka
        interval = min(
            max(k.commit_interval, self._write_cost / k.changelog_budget),
            max(k.commit_interval, k.commit_interval_max),
            _MAX_INTERVAL_GROWTH * self._interval,
        )
        self._interval = interval
        self.metrics.checkpoint_interval.set(interval)
        return interval

    def _checkpoint_failed(self, exc: Exception) -> None:
        """The broker did not take a checkpoint: pause consumption, retry with backoff."""
        self._unsettled = True
        self.metrics.checkpoints.labels(outcome="failed").inc()
        self._set_reachable(False)
        self._pause(True)
        log.warning(
            "checkpoint failed error=%r retry_in=%.1fs consumption=paused", exc, self._backoff
        )
        self._next_checkpoint = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.settings.kafka.reconnect_backoff_max)

    def _expire_idle(self) -> None:
        """Let idle streams expire even while no readings arrive (the engine expires them
        at the start of every batch otherwise)."""
        assert self._engine is not None
        if self.settings.engine.ttl_seconds is None:
            return
        expired = self._engine.process([], now=time.time()).expired
        if expired:
            self._forget(expired)
            self.metrics.evictions.labels(cause="ttl").inc(len(expired))
            log.info("streams expired streams=%d", len(expired))

    def _pause(self, paused: bool) -> None:
        """While checkpoints fail, stop fetching so nothing more piles up unacknowledged."""
        assert self._source is not None
        if paused == self._paused:
            return
        source = self._source
        if paused:
            source.pause(source.assignment())
        else:
            with self._restore_lock:
                waiting = set(self._to_restore)  # these stay paused until restored
            source.resume(source.paused() - waiting)
        self._paused = paused

    def _update_gauges(self) -> None:
        assert self._engine is not None and self._source is not None
        store = self._engine.store
        self.metrics.active_streams.set(len(store))
        self.metrics.state_bytes.set(store.state_bytes)
        topic = self.settings.kafka.input_topic
        for partition, lag in self._source.lag().items():
            self.metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)

    def _set_reachable(self, reachable: bool) -> None:
        self.metrics.broker_reachable.set(1 if reachable else 0)
        self.readiness.set("broker_reachable", reachable)

    # -- rebalances -------------------------------------------------------------------------

    # The source runs the callbacks below only while the poll loop waits inside its `poll`
    # or `close` (kafka-python on its I/O thread, confluent-kafka on the loop's own), so
    # reading the store there is safe. They
    # run the revoke checkpoint, pause newly assigned partitions, set readiness and metrics,
    # and queue events that the loop applies after the poll (`_apply_moves`: drops, then
    # restores).

    def partitions_assigned(self, partitions: set[int]) -> None:
        assert self._source is not None
        owned = self._source.assignment()
        self._streams.assigned(owned)
        self.metrics.assigned_partitions.set(len(owned))
        with self._restore_lock:
            # partitions kept through the rebalance keep their streams in memory (they were
            # checkpointed on revoke); the others are restored before they are fetched
            new = owned - self._held
            self._held = set(owned)
            self._to_restore = (self._to_restore & owned) | new
            waiting = set(self._to_restore)
        if waiting:
            self._source.pause(sorted(waiting))
            self._restore_retry_at = 0.0
        self.readiness.set("state_restored", not waiting)
        self.readiness.set("partitions_assigned", True)

    def flush_before_revoke(self, partitions: set[int]) -> bool:
        """Steps 1 and 2 of the checkpoint for partitions being revoked (flush the forecasts,
        write their changed states to the changelog); the source then commits their offsets
        (step 3). False when a step failed: nothing is committed."""
        assert self._sink is not None
        if self._final_checkpoint_failed:
            return False  # the broker is gone; do not wait for it again while leaving
        timeout = self.settings.kafka.checkpoint_timeout
        with self._restore_lock:
            restoring = self._to_restore & partitions
        try:
            # 1. flush the forecast producer
            self._sink.flush(timeout)
            # 2. write the revoked partitions' changed states (a partition still waiting for
            # its restore has nothing of its own in memory yet)
            self._write_changelog(partitions - restoring, timeout)
        except (SinkError, ChangelogError) as exc:
            self.metrics.checkpoints.labels(outcome="failed").inc()
            log.warning(
                "checkpoint on revoke failed, offsets not committed partitions=%s error=%r",
                sorted(partitions),
                exc,
            )
            return False
        return True

    def partitions_revoked(self, partitions: set[int], *, lost: bool) -> None:
        if self._pending is not None:
            # committed by the revoke itself, or now another member's to commit
            for p in partitions:
                self._pending.offsets.pop(p, None)
        if self._queued is not None:
            # sent by the revoke checkpoint; if that failed (or the partitions are lost),
            # they must not reach the changelog after the next owner's records
            self._queued.drop(partitions)
        if lost:
            # another member may already own them: their streams go without being written
            self._streams.lost(partitions)
        else:
            self._streams.revoked(partitions)
        with self._restore_lock:
            # a partition revoked before its restore ran has nothing in memory to keep
            unrestored = partitions & self._to_restore
            self._to_restore -= partitions
            self._held -= partitions if lost else unrestored
        assert self._source is not None
        left = self._source.assignment() - partitions
        self.metrics.assigned_partitions.set(len(left))
        if not left:  # until the rebalance completes
            self.readiness.set("partitions_assigned", False)

    def _restore_pending(self) -> None:
        """Load the streams of newly assigned partitions from their changelog partitions,
        then let their readings be fetched. A failed restore is retried with backoff; the
        partitions stay paused meanwhile and /readyz reports ``state_restored`` false."""
        assert self._engine is not None and self._restorer is not None
        assert self._source is not None
        with self._restore_lock:
            pending = set(self._to_restore)
        if not pending or time.monotonic() < self._restore_retry_at:
            return
        k = self.settings.kafka
        started = time.monotonic()
        try:
            restored = self._restorer.read(pending, timeout=k.restore_timeout)
        except ChangelogError as exc:
            log.warning(
                "restore failed partitions=%s error=%s retry_in=%.1fs",
                sorted(pending),
                exc,
                self._restore_backoff,
            )
            self._restore_retry_at = time.monotonic() + self._restore_backoff
            self._restore_backoff = min(self._restore_backoff * 2, k.reconnect_backoff_max)
            return
        self._restore_backoff = _FIRST_BACKOFF
        store = self._engine.store
        now = time.time()
        for part in restored:
            try:
                store.load_many(list(part.states.items()), now=now)
            except StateError as exc:
                raise StateError(
                    f"changelog {self._restorer.topic} partition {part.partition}: {exc}; serve "
                    "the model that wrote it, or point kafka.changelog_topic at an empty topic"
                ) from exc
            self._streams.note_restored(part.states, part.partition)
            label = str(part.partition)
            self.metrics.restore_seconds.labels(partition=label).set(part.seconds)
            self.metrics.restored_streams.labels(partition=label).set(len(part.states))
            log.info(
                "state restored topic=%s partition=%d streams=%d records=%d tombstones=%d "
                "seconds=%.3f",
                self._restorer.topic,
                part.partition,
                len(part.states),
                part.records,
                part.tombstones,
                part.seconds,
            )
        with self._restore_lock:
            self._to_restore -= pending
            waiting = bool(self._to_restore)
        owned = self._source.assignment()
        resume = sorted(pending & owned)
        if resume and not self._paused:
            self._source.resume(resume)
        self.metrics.active_streams.set(len(store))
        self.readiness.set("state_restored", not waiting)
        log.info(
            "restore done partitions=%s streams=%d seconds=%.3f",
            sorted(pending),
            sum(len(p.states) for p in restored),
            time.monotonic() - started,
        )

    def _apply_moves(self) -> None:
        """Drop the streams of partitions that are no longer ours (see `PartitionStreams`)."""
        assert self._engine is not None
        moves = self._streams.take_moves()
        if moves.partitions:
            topic = self.settings.kafka.input_topic
            for p in moves.partitions:
                with contextlib.suppress(KeyError):
                    self.metrics.consumer_lag.remove(topic, str(p))
            self._engine.store.drop(moves.stream_ids)
            # their new owner writes their changelog partitions from now on
            for sid in [s for s, p in self._tombstones.items() if p in moves.partitions]:
                del self._tombstones[sid]
            self.metrics.evictions.labels(cause="revoked").inc(len(moves.stream_ids))
            self.metrics.active_streams.set(len(self._engine.store))
            log.info(
                "streams dropped partitions=%s streams=%d",
                sorted(moves.partitions),
                len(moves.stream_ids),
            )
        if moves.assigned and self._paused:  # newly assigned partitions start unpaused
            self._paused = False
            self._pause(True)
        self._restore_pending()

    # -- shutdown --------------------------------------------------------------------------

    def _shutdown(self) -> int:
        assert self._source is not None and self._sink is not None
        k = self.settings.kafka
        status = 0
        try:
            self.checkpoint(timeout=k.shutdown_timeout)
            log.info("final checkpoint done offsets committed")
        except GroupChangingError as exc:
            # A rebalance is under way; its revoke callback committed what was processed.
            left = self._source.pending_commit()
            if left:
                status = 1
                log.error("final commit refused by a rebalance offsets=%s error=%r", left, exc)
            else:
                log.info("final checkpoint done offsets committed on revoke")
        except SensorcastError as exc:
            status = 1
            self._final_checkpoint_failed = True
            log.error(
                "final checkpoint failed; unacknowledged records will be processed again "
                "by the next member error=%r",
                exc,
            )
        self._source.close(timeout=5.0)
        self._sink.close(timeout=5.0)
        if self._changelog is not None:
            self._changelog.close(timeout=5.0)
        if self._restorer is not None:
            self._restorer.close()
        log.info("stopped status=%d", status)
        return status
