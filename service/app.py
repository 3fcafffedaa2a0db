"""The service: the parts wired together, and the poll loop that drives them.

`Service(settings).run()` loads the model, opens the clients of its `Transport` (Kafka by
default), then loops: poll -> `Processor` (decode, engine, forecasts, dead letters) ->
`Checkpointer` (flush, changelog, commit, every ``kafka.commit_interval``), while
`PartitionLifecycle` restores, pauses and drops partitions as the group moves them. The
parts, each in its own module:

- `service.processing.Processor`: one micro-batch through the pipeline;
- `service.checkpoint.Checkpointer`: the commit order, written once;
- `service.lifecycle.PartitionLifecycle`: assignment, restore, pause, moves;
- `service.offsets.Offsets`: what was processed and committed, per partition;
- `service.faults.Crashes`: the fault-injection wrappers of ``debug.crash_at``;
- `service.watch.ModelWatcher`: newer model versions, verified and swapped in while serving.

`run()` blocks until `stop()` is called (from a signal handler or another thread), then
finishes the batch in hand, checkpoints, leaves the group and returns 0 (1 when the final
checkpoint could not complete). While the broker is unreachable, at start or later, it
retries with exponential backoff, reports not-ready on ``/readyz`` and logs each attempt;
it neither exits nor spins. The guarantees are in docs/guarantees.md.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from service.accuracy import Scorekeeper
from service.checkpoint import Checkpointer
from service.codec import next_offsets
from service.config import ServiceSettings
from service.core.engine import StreamEngine
from service.deadletters import DeadLetters
from service.errors import (
    CheckpointError,
    GroupChangingError,
    SensorcastError,
    TransportError,
)
from service.faults import CRASH_EXIT_STATUS, Crashes
from service.http import HttpServer, Readiness, serve_http
from service.lifecycle import PartitionLifecycle
from service.loading import load_engine, load_shadow
from service.metrics import ServiceMetrics
from service.offsets import Commit, Offsets
from service.partitions import PartitionStreams
from service.processing import Processor
from service.shadow import Shadow
from service.transport import Clients, Transport
from service.watch import ModelWatcher

__all__ = ["CRASH_EXIT_STATUS", "Service"]

log = logging.getLogger(__name__)

_FIRST_BACKOFF = 0.5


@dataclass
class _Parts:
    """What the service runs on once connected."""

    clients: Clients
    offsets: Offsets
    lifecycle: PartitionLifecycle
    checkpointer: Checkpointer
    processor: Processor
    dead_letters: DeadLetters


class Service:
    """One member of the consumer group, serving one model."""

    def __init__(self, settings: ServiceSettings, transport: Transport | None = None) -> None:
        """`transport` opens the clients: Kafka (``kafka.client``) when None, or an
        in-memory one in tests (`service.testing.MemoryTransport`)."""
        if transport is None:
            from service.kafka.connect import KafkaTransport

            transport = KafkaTransport(settings.kafka)
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.readiness = Readiness(self.metrics)
        self._transport = transport
        self._stop = threading.Event()
        self._started = threading.Event()
        self._http: HttpServer | None = None
        self._engine: StreamEngine | None = None
        self._shadow: StreamEngine | None = None
        self._parts: _Parts | None = None
        self._watcher: ModelWatcher | None = None

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
        """The stream engine, once the model is loaded."""
        return self._engine

    @property
    def shadow(self) -> StreamEngine | None:
        """The challenger's engine (`model.shadow`), once loaded; None without one."""
        return self._shadow

    def run(self) -> int:
        """Serve until stopped; return the process exit status."""
        try:
            self._http = serve_http(self.settings.http, self.metrics, self.readiness)
            self._started.set()
            self._engine = load_engine(self.settings, self.metrics)
            self._shadow = load_shadow(self.settings)
            self.readiness.set("model_loaded", True)
            parts = self._connect(self._engine)
            if parts is None:
                return 0  # stopped before the broker was ever reached
            self._watcher = ModelWatcher.serving(self.settings.model, self._engine, self.metrics)
            self._loop(parts)
            return self._shutdown(parts)
        except SensorcastError:
            raise  # an operator's error, reported by the caller in one line
        except Exception:
            log.exception("service failed; offsets since the last checkpoint are not committed")
            raise
        finally:
            if self._watcher is not None:
                self._watcher.stop()
            self.readiness.set("partitions_assigned", False)
            if self._http is not None:
                self._http.stop()
            self._started.set()

    # -- start-up --------------------------------------------------------------------------

    def _connect(self, engine: StreamEngine) -> _Parts | None:
        """Open the clients, retrying while the broker is unreachable, and wire the parts
        over them. None when stopped first."""
        k = self.settings.kafka
        delay = _FIRST_BACKOFF
        while not self._stop.is_set():
            try:
                extra = [] if self._shadow is None else [k.shadow_topic]
                clients = self._transport.open(k, self, extra)
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
            self._parts = self._wire(clients, engine)
            self._set_reachable(True)
            log.info(
                "connected client=%s bootstrap=%s input=%s partitions=%d output=%s "
                "dead_letters=%s group=%s",
                k.client,
                k.bootstrap_servers,
                k.input_topic,
                clients.partitions[k.input_topic],
                k.output_topic,
                k.dead_letter_topic,
                k.group_id,
            )
            return self._parts
        return None

    def _wire(self, clients: Clients, engine: StreamEngine) -> _Parts:
        """The parts over `clients`, with the fault-injection wrappers when asked."""
        k, metrics = self.settings.kafka, self.metrics
        sink, writer = clients.sink, clients.changelog_writer
        commit: Commit = clients.source.commit
        if self.settings.debug.crash_at is not None:
            crashes = Crashes(self.settings.debug.crash_at)
            sink, writer, commit = (
                crashes.sink(sink),
                crashes.changelog(writer),
                crashes.commit(commit),
            )
        store, streams = engine.store, PartitionStreams()
        offsets = Offsets(k.input_topic, commit)
        scores = Scorekeeper(metrics.accuracy)
        shadow = None
        if self._shadow is not None:
            shadow = Shadow(self._shadow, scores.ledger(self._shadow.card))
        lifecycle = PartitionLifecycle(
            k,
            source=clients.source,
            reader=clients.changelog_reader,
            store=store,
            streams=streams,
            metrics=metrics,
            readiness=self.readiness,
            also_drop=[] if shadow is None else [shadow.engine.store],
        )
        checkpointer = Checkpointer(
            k,
            sink=sink,
            changelog=writer,
            offsets=offsets,
            store=store,
            owners=lifecycle,
            metrics=metrics,
            ledgers=scores,
        )
        dead_letters = DeadLetters(k, self.settings.log, sink=sink, store=store, metrics=metrics)
        processor = Processor(
            k,
            engine=engine,
            sink=sink,
            dead_letters=dead_letters,
            streams=streams,
            metrics=metrics,
            mirror_partitions=clients.mirror_partitions,
            scores=scores,
            shadow=shadow,
        )
        return _Parts(clients, offsets, lifecycle, checkpointer, processor, dead_letters)

    # -- the loop --------------------------------------------------------------------------

    def _loop(self, parts: _Parts) -> None:
        source, checkpointer = parts.clients.source, parts.checkpointer
        while not self._stop.is_set():
            self.metrics.poll_iterations.inc()
            try:
                records = source.poll()
            except TransportError as exc:
                self._set_reachable(False)
                log.warning("poll failed error=%r", exc)
                self._stop.wait(checkpointer.backoff)
                continue
            checkpointer.partitions_gone(parts.lifecycle.apply_moves())
            if self._watcher is not None and (ready := self._watcher.take()) is not None:
                parts.processor.swap_model(ready.model)
            if records:
                parts.offsets.processed(next_offsets(records))
                gone = parts.processor.process(records)
                if gone:
                    self._let_go(parts, gone)
                self._deliver_light(parts, len(records))
            parts.dead_letters.refused()
            try:
                if checkpointer.writing:
                    checkpointer.send_slice()
                if time.monotonic() >= checkpointer.due_at:
                    self._checkpoint(parts)
            except CheckpointError as exc:
                self._checkpoint_failed(parts, exc)

    def _deliver_light(self, parts: _Parts, records: int) -> None:
        """Under light load (a micro-batch short of ``kafka.max_batch``), send its forecasts
        now, as one request, and wait for them at most ``kafka.fetch_pause_ms`` (a pause
        the next fetch waits out anyway); a full micro-batch's go with the linger."""
        k = self.settings.kafka
        if k.fetch_pause_ms and records < k.max_batch:
            parts.clients.sink.deliver(k.fetch_pause_ms / 1000)

    def _checkpoint(self, parts: _Parts) -> None:
        """The periodic checkpoint, then what is due with it: idle streams expired, gauges."""
        try:
            parts.checkpointer.periodic()
        except GroupChangingError as exc:
            log.info("commit deferred while the group rebalances error=%s", exc)
            return
        self._set_reachable(True)
        parts.lifecycle.pause(False)
        self._expire_idle(parts)
        store, source = parts.processor.store, parts.clients.source
        self.metrics.record_state(
            len(store), store.state_bytes, source.topic, source.lag(parts.offsets.positions())
        )

    def _checkpoint_failed(self, parts: _Parts, exc: CheckpointError) -> None:
        """The broker did not take a checkpoint: pause consumption until one succeeds."""
        self._set_reachable(False)
        parts.lifecycle.pause(True)
        log.warning(
            "checkpoint failed error=%r retry_in=%.1fs consumption=paused",
            exc.__cause__ or exc,
            exc.retry_in,
        )

    def _let_go(self, parts: _Parts, stream_ids: list[str]) -> None:
        """Streams the engine dropped (capacity, TTL): tombstoned at the next checkpoint."""
        parts.checkpointer.tombstone(stream_ids)
        parts.lifecycle.streams.forget(stream_ids)

    def _expire_idle(self, parts: _Parts) -> None:
        """Let idle streams expire even while no readings arrive (the engine expires them
        at the start of every batch otherwise)."""
        if self.settings.engine.ttl_seconds is not None:
            expired = parts.processor.expire_idle()
            if expired:
                self._let_go(parts, expired)

    def _set_reachable(self, reachable: bool) -> None:
        self.metrics.broker_reachable.set(1 if reachable else 0)
        self.readiness.set("broker_reachable", reachable)

    # -- rebalances (`RebalanceHandler`): run inside the source's poll or close ------------

    def partitions_assigned(self, partitions: set[int]) -> None:
        """Pause the new partitions until their streams are restored."""
        assert self._parts is not None
        self._parts.lifecycle.assigned()

    def partitions_revoked(self, partitions: set[int]) -> dict[int, int]:
        """The revoke checkpoint; return the offsets for the client to commit."""
        assert self._parts is not None
        offsets = self._parts.checkpointer.revoke(partitions)
        self._parts.lifecycle.revoked(partitions, lost=False)
        self._parts.offsets.forget(partitions)
        return offsets

    def partitions_lost(self, partitions: set[int]) -> None:
        """Drop the partitions without writing or committing anything of theirs."""
        assert self._parts is not None
        self._parts.checkpointer.lost(partitions)
        self._parts.lifecycle.revoked(partitions, lost=True)
        self._parts.offsets.forget(partitions)

    # -- shutdown --------------------------------------------------------------------------

    def _shutdown(self, parts: _Parts) -> int:
        status = 0
        try:
            parts.checkpointer.final(self.settings.kafka.shutdown_timeout)
            log.info("final checkpoint done offsets committed")
        except GroupChangingError as exc:
            # A rebalance is under way; its revoke callback committed what was processed.
            left = parts.offsets.pending_commit()
            if left:
                status = 1
                log.error("final commit refused by a rebalance offsets=%s error=%r", left, exc)
            else:
                log.info("final checkpoint done offsets committed on revoke")
        except CheckpointError as exc:
            status = 1
            log.error(
                "final checkpoint failed; unacknowledged records will be processed again "
                "by the next member error=%r",
                exc.__cause__ or exc,
            )
        clients = parts.clients
        clients.source.close(timeout=5.0)
        clients.sink.close(timeout=5.0)
        clients.changelog_writer.close(timeout=5.0)
        clients.changelog_reader.close()
        log.info("stopped status=%d", status)
        return status
