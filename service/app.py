"""The service wiring: poll -> decode -> engine -> produce -> checkpoint.

`Service(settings).run()` blocks until `stop()` is called (from a signal handler or another
thread), then finishes the batch in hand, checkpoints, leaves the group and returns 0 (1 when
the final checkpoint could not complete). While the broker is unreachable, at start or later,
it retries with exponential backoff, reports not-ready on ``/readyz`` and logs each attempt;
it neither exits nor spins.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING

from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

from service.config import ServiceSettings
from service.core.engine import EngineConfig, StreamEngine
from service.core.model import OnnxStepModel
from service.core.readings import Reject
from service.errors import ConfigError, SensorcastError, SinkError
from service.http import HttpServer, Readiness
from service.kafka.codec import ForecastEncoder, ReadingDecoder, dead_letter_headers
from service.kafka.connect import connect
from service.kafka.sink import KafkaSink
from service.kafka.source import KafkaSource
from service.metrics import ServiceMetrics
from service.partitions import PartitionStreams
from service.registry import Registry

if TYPE_CHECKING:
    from kafka.consumer.fetcher import ConsumerRecord

__all__ = ["Service"]

log = logging.getLogger(__name__)

_FIRST_BACKOFF = 0.5
# Commit errors that mean "the group is changing", not "the broker is unreachable".
_GROUP_CHURN = (
    RebalanceInProgressError,
    CommitFailedError,
    IllegalGenerationError,
    UnknownMemberIdError,
)


class Service:
    """One member of the consumer group, serving one model."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.readiness = Readiness(self.metrics)
        self._stop = threading.Event()
        self._started = threading.Event()
        self._http: HttpServer | None = None
        self._source: KafkaSource | None = None
        self._sink: KafkaSink | None = None
        self._engine: StreamEngine | None = None
        self._encoder: ForecastEncoder | None = None
        self._decoder = ReadingDecoder(
            max_message_bytes=settings.kafka.max_message_bytes,
            max_future_seconds=settings.kafka.max_future_seconds,
        )
        self._streams = PartitionStreams()
        self._backoff = _FIRST_BACKOFF
        self._next_checkpoint = 0.0
        self._paused = False
        self._final_checkpoint_failed = False
        self._mirror_partitions = False

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
            self._start_http()
            self._load_model()
            if not self._connect():
                return 0  # stopped before the broker was ever reached
            self._loop()
            return self._shutdown()
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
        )
        self._engine = StreamEngine(model, config)
        card = loaded.card
        self._encoder = ForecastEncoder(card)
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
            except (KafkaError, OSError) as exc:
                self._set_reachable(False)
                log.warning(
                    "broker unreachable bootstrap=%s error=%r retry_in=%.1fs",
                    k.bootstrap_servers,
                    exc,
                    delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, k.reconnect_backoff_max)
                continue
            self._source, self._sink = transport.source, transport.sink
            self._mirror_partitions = transport.mirror_partitions
            self._set_reachable(True)
            log.info(
                "connected bootstrap=%s input=%s partitions=%d output=%s dead_letters=%s group=%s",
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
        interval = self.settings.kafka.commit_interval
        self._next_checkpoint = time.monotonic() + interval
        while not self._stop.is_set():
            self.metrics.poll_iterations.inc()
            try:
                records = source.poll()
            except KafkaError as exc:
                self._set_reachable(False)
                log.warning("poll failed error=%r", exc)
                self._stop.wait(self._backoff)
                continue
            self._apply_moves()
            if records:
                self._process(records)
            if time.monotonic() >= self._next_checkpoint:
                self._periodic_checkpoint()

    def _process(self, records: list[ConsumerRecord]) -> None:
        assert self._engine is not None and self._sink is not None and self._encoder is not None
        received = time.time()
        batch = self._decoder.decode(records, received=received)
        result = self._engine.process(batch.readings, now=received)
        sink, encode = self._sink, self._encoder.encode
        if self._mirror_partitions:
            for forecast in result.forecasts:
                sink.send_forecast(forecast.stream_id, encode(forecast), forecast.partition)
        else:
            for forecast in result.forecasts:
                sink.send_forecast(forecast.stream_id, encode(forecast))
        self._streams.note(batch.readings)
        rejects = batch.rejects + result.rejects
        if rejects:
            self._dead_letter(rejects, records)
        self.metrics.record_batch(len(records), result, time.time() - received)
        self._streams.forget(result.evicted)
        self._streams.forget(result.expired)

    def _dead_letter(self, rejects: list[Reject], records: list[ConsumerRecord]) -> None:
        assert self._sink is not None
        by_position = {(r.partition, r.offset): r for r in records}
        for reject in rejects:
            record = by_position[(reject.partition, reject.offset)]
            reason = str(reject.reason)
            self._sink.send_dead_letter(
                record.key,
                record.value,
                dead_letter_headers(
                    reason, reject.detail, record.topic, record.partition, record.offset
                ),
            )
            self.metrics.rejects.labels(reason=reason).inc()
            self.metrics.dead_letters.inc()
            log.warning(
                "dead letter reason=%s topic=%s partition=%d offset=%d detail=%s",
                reason,
                record.topic,
                record.partition,
                record.offset,
                reject.detail,
            )

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint(self, timeout: float | None = None) -> None:
        """Make everything processed so far durable, in this order and only this order:

        1. flush the producer: every forecast and dead letter of a processed record is
           acknowledged by the broker;
        2. commit the input offsets of the processed records.

        A failure at 1 skips 2, so an offset is never committed ahead of its forecast
        (at-least-once). On a revoke the same two steps run inside the rebalance callback:
        `flush_before_revoke`, then `KafkaSource.commit_on_loop`.

        The state changelog (DESIGN.md section 5) is not written yet: a member that takes
        over a partition starts its streams from the initial state. When it lands, writing
        the dirty streams goes between 1 and 2.
        """
        assert self._sink is not None and self._source is not None
        if timeout is None:
            timeout = self.settings.kafka.checkpoint_timeout
        started = time.monotonic()
        # 1. flush the forecast producer
        self._sink.flush(timeout)
        # 2. commit the input offsets
        self._source.commit(timeout_ms=int(timeout * 1000))
        self.metrics.checkpoint_seconds.observe(time.monotonic() - started)
        self.metrics.checkpoints.labels(outcome="ok").inc()

    def _periodic_checkpoint(self) -> None:
        k = self.settings.kafka
        try:
            self.checkpoint()
        except _GROUP_CHURN as exc:
            # Not a broker problem: the next poll completes the rebalance, whose revoke
            # callback commits; until then the commit waits.
            self.metrics.checkpoints.labels(outcome="failed").inc()
            log.info("commit deferred while the group rebalances error=%s", type(exc).__name__)
            self._next_checkpoint = time.monotonic() + k.commit_interval
            return
        except (SinkError, KafkaError) as exc:
            self.metrics.checkpoints.labels(outcome="failed").inc()
            self._set_reachable(False)
            self._pause(True)
            log.warning(
                "checkpoint failed error=%r retry_in=%.1fs consumption=paused", exc, self._backoff
            )
            self._next_checkpoint = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, k.reconnect_backoff_max)
            return
        self._backoff = _FIRST_BACKOFF
        self._set_reachable(True)
        self._pause(False)
        self._expire_idle()
        self._update_gauges()
        self._next_checkpoint = time.monotonic() + k.commit_interval

    def _expire_idle(self) -> None:
        """Let idle streams expire even while no readings arrive (the engine expires them
        at the start of every batch otherwise)."""
        assert self._engine is not None
        if self.settings.engine.ttl_seconds is None:
            return
        expired = self._engine.process([], now=time.time()).expired
        if expired:
            self._streams.forget(expired)
            self.metrics.evictions.labels(cause="ttl").inc(len(expired))
            log.info("streams expired streams=%d", len(expired))

    def _pause(self, paused: bool) -> None:
        """While checkpoints fail, stop fetching so nothing more piles up unacknowledged."""
        assert self._source is not None
        if paused == self._paused:
            return
        consumer = self._source.consumer
        if paused:
            consumer.pause(*consumer.assignment())
        else:
            consumer.resume(*consumer.paused())
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

    # kafka-python runs the three callbacks below on its I/O thread, while the poll loop may
    # be between polls: they only flush the (thread-safe) producer, set readiness and
    # metrics, and queue events that `_apply_moves` applies to the store after the poll.

    def partitions_assigned(self, partitions: set[int]) -> None:
        assert self._source is not None
        owned = self._source.assignment()
        self._streams.assigned(owned)
        self.metrics.assigned_partitions.set(len(owned))
        # Restoring the partitions' streams from the changelog belongs here (next milestone);
        # until then a newly assigned partition's streams start from the initial state.
        self.readiness.set("state_restored", True)
        self.readiness.set("partitions_assigned", True)

    def flush_before_revoke(self, partitions: set[int]) -> bool:
        """Step 1 of the checkpoint for partitions being revoked; the source then commits
        their offsets (step 2) on the consumer's loop."""
        assert self._sink is not None
        if self._final_checkpoint_failed:
            return False  # the broker is gone; do not wait for it again while leaving
        try:
            self._sink.flush(self.settings.kafka.checkpoint_timeout)
        except SinkError as exc:
            self.metrics.checkpoints.labels(outcome="failed").inc()
            log.warning(
                "flush on revoke failed, offsets not committed partitions=%s error=%r",
                sorted(partitions),
                exc,
            )
            return False
        return True

    def partitions_revoked(self, partitions: set[int], *, lost: bool) -> None:
        if lost:
            self._streams.lost(partitions)
        else:
            self._streams.revoked(partitions)
        assert self._source is not None
        left = self._source.assignment() - partitions
        self.metrics.assigned_partitions.set(len(left))
        if not left:  # until the rebalance completes
            self.readiness.set("partitions_assigned", False)

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

    # -- shutdown --------------------------------------------------------------------------

    def _shutdown(self) -> int:
        assert self._source is not None and self._sink is not None
        k = self.settings.kafka
        status = 0
        try:
            self.checkpoint(timeout=k.shutdown_timeout)
            log.info("final checkpoint done offsets committed")
        except _GROUP_CHURN as exc:
            # A rebalance is under way; its revoke callback committed what was processed.
            left = self._source.pending_commit()
            if left:
                status = 1
                log.error("final commit refused by a rebalance offsets=%s error=%r", left, exc)
            else:
                log.info("final checkpoint done offsets committed on revoke")
        except (SensorcastError, KafkaError) as exc:
            status = 1
            self._final_checkpoint_failed = True
            log.error(
                "final checkpoint failed; unacknowledged records will be processed again "
                "by the next member error=%r",
                exc,
            )
        self._source.close(timeout=5.0)
        self._sink.close(timeout=5.0)
        log.info("stopped status=%d", status)
        return status
