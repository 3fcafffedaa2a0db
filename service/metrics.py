"""Every Prometheus metric of the service, defined once, on its own registry.

A `ServiceMetrics` owns a fresh `CollectorRegistry`, so several services (in tests, or a
demo) never collide in the process-global default registry. Names follow Prometheus
conventions: ``sensorcast_`` prefix, ``_total`` on counters, base units (seconds, bytes).
"""

from __future__ import annotations

import platform
import threading
from collections import Counter as Tally
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from service import __version__
from service.accuracy import ACCURACY_METRICS, AccuracyCollector
from service.core.engine import BatchResult, EngineResult
from service.core.readings import DropReason, RejectReason
from service.core.state import REWARM_REASONS

__all__ = ["CONTENT_TYPE", "EVICTION_CAUSES", "METRIC_NAMES", "ArrayHistogram", "ServiceMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

EVICTION_CAUSES = ("ttl", "capacity", "revoked")

#: Every metric family the service exposes, as a parser names them (counters without
#: ``_total``, info metrics with ``_info``).
METRIC_NAMES = (
    "sensorcast_readings_consumed",
    "sensorcast_forecasts_produced",
    "sensorcast_rejects",
    "sensorcast_drops",
    "sensorcast_dead_letters",
    "sensorcast_dead_letter_truncations",
    "sensorcast_dead_letter_failures",
    "sensorcast_state_resets",
    "sensorcast_clock_resets",
    "sensorcast_evictions",
    "sensorcast_active_streams",
    "sensorcast_state_bytes",
    "sensorcast_batch_size",
    "sensorcast_rounds_per_batch",
    "sensorcast_model_call_seconds",
    "sensorcast_reading_to_forecast_seconds",
    "sensorcast_batch_seconds",
    "sensorcast_consumer_lag",
    "sensorcast_assigned_partitions",
    "sensorcast_poll_loop_iterations",
    "sensorcast_checkpoints",
    "sensorcast_checkpoint_seconds",
    "sensorcast_checkpoint_streams",
    "sensorcast_checkpoint_bytes",
    "sensorcast_changelog_records",
    "sensorcast_changelog_write_seconds",
    "sensorcast_checkpoint_interval_seconds",
    "sensorcast_restore_seconds",
    "sensorcast_restored_streams",
    "sensorcast_broker_reachable",
    "sensorcast_ready",
    "sensorcast_model_info",
    "sensorcast_model_swaps",
    "sensorcast_rewarms",
    "sensorcast_rewarm_seconds",
    "sensorcast_build_info",
    *ACCURACY_METRICS,
)

_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000)
_ROUND_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_AGE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class ArrayHistogram(Collector):
    """A Prometheus histogram observed a numpy array at a time.

    One observation per forecast is tens of thousands a second; `Histogram.observe` costs
    about a microsecond each, while binning a batch's values with `searchsorted` and
    `bincount` costs about that for the whole batch. Exposed exactly as a `Histogram`
    (``_bucket`` with cumulative ``le`` counts, ``_sum``, ``_count``).
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = np.asarray(sorted(buckets), np.float64)
        self._counts = np.zeros(len(self._bounds) + 1, np.int64)  # the last is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()  # observed by the poll loop, collected by the scrape
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Observe every value of `values` (in the histogram's unit) at once."""
        if not values.size:
            return
        # bucket i holds bounds[i-1] < v <= bounds[i], as Prometheus' ``le`` says
        counts = np.bincount(
            np.searchsorted(self._bounds, values, side="left"), minlength=len(self._counts)
        )
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def count(self) -> int:
        """Observations so far."""
        with self._lock:
            return int(self._counts.sum())

    def describe(self) -> Iterator[HistogramMetricFamily]:
        """The family without samples, for the registry's name check."""
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The family with cumulative bucket counts, sum and count, as `Histogram` exposes them."""
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        les = [repr(float(b)) for b in self._bounds] + ["+Inf"]  # as Histogram writes them
        yield HistogramMetricFamily(
            self.name,
            self.documentation,
            buckets=list(zip(les, cumulative, strict=True)),
            sum_value=total,
        )


class ServiceMetrics:
    """The service's metrics. Attribute names say what each one counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Declared in exposition order, one area at a time.
        self._declare_records(self.registry)
        self._declare_dead_letters(self.registry)
        self._declare_stream_state(self.registry)
        self._declare_batches(self.registry)
        self._declare_consumer(self.registry)
        self._declare_checkpoints(self.registry)
        self._declare_changelog(self.registry)
        self._declare_health(self.registry)
        self.accuracy = AccuracyCollector()  # every model's scores (`service.accuracy`)
        # Every label value exists from the start, so rates and alerts work from zero.
        for outcome in ("ok", "failed"):
            self.checkpoints.labels(outcome=outcome)
        for reject in RejectReason:
            self.rejects.labels(reason=str(reject))
        for drop in DropReason:
            self.drops.labels(reason=str(drop))
        for cause in EVICTION_CAUSES:
            self.evictions.labels(cause=cause)
        for kind in ("state", "tombstone"):
            self.changelog_records.labels(kind=kind)
        for outcome in ("ok", "failed"):
            self.model_swaps.labels(outcome=outcome)
        for reason in REWARM_REASONS.values():
            self.rewarms.labels(reason=reason)

    def _declare_records(self, r: CollectorRegistry) -> None:
        """Records in and out: consumed, forecast, rejected, dropped."""
        self.readings_consumed = Counter(
            "sensorcast_readings_consumed",
            "Records consumed from the input topic (valid or not).",
            registry=r,
        )
        self.forecasts_produced = Counter(
            "sensorcast_forecasts_produced",
            "Forecasts sent to the output topic.",
            registry=r,
        )
        self.rejects = Counter(
            "sensorcast_rejects",
            "Records that could not be applied, by reason; each goes to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.drops = Counter(
            "sensorcast_drops",
            "Valid readings not applied (duplicate, late, already applied), by reason.",
            ["reason"],
            registry=r,
        )

    def _declare_dead_letters(self, r: CollectorRegistry) -> None:
        """The dead-letter topic: written, truncated, given up."""
        self.dead_letters = Counter(
            "sensorcast_dead_letters",
            "Records written to the dead-letter topic.",
            registry=r,
        )
        self.dead_letter_truncations = Counter(
            "sensorcast_dead_letter_truncations",
            "Dead letters written as their first bytes: the record was larger than "
            "kafka.dead_letter_max_bytes, or the broker refused it whole.",
            registry=r,
        )
        self.dead_letter_failures = Counter(
            "sensorcast_dead_letter_failures",
            "Dead letters the broker refused even without a value: given up, with a log line "
            "naming the source partition and offset.",
            registry=r,
        )

    def _declare_stream_state(self, r: CollectorRegistry) -> None:
        """Stream states: resets, evictions, how many and how large."""
        self.state_resets = Counter(
            "sensorcast_state_resets",
            "Stream states reset after a gap longer than the configured maximum.",
            registry=r,
        )
        self.clock_resets = Counter(
            "sensorcast_clock_resets",
            "Streams whose clock was set back after readings continued from before a jump "
            "ahead (a bad timestamp): their state was reset (engine.clock_recovery).",
            registry=r,
        )
        self.evictions = Counter(
            "sensorcast_evictions",
            "Stream states removed: `ttl` (idle too long), `capacity` (least recently used beyond "
            "the cap) or `revoked` (partition handed to another member).",
            ["cause"],
            registry=r,
        )
        self.active_streams = Gauge(
            "sensorcast_active_streams", "Streams whose state is held in memory.", registry=r
        )
        self.state_bytes = Gauge(
            "sensorcast_state_bytes", "Bytes of recurrent state held for all streams.", registry=r
        )

    def _declare_batches(self, r: CollectorRegistry) -> None:
        """Micro-batches: size, model rounds, and how long they take."""
        self.batch_size = Histogram(
            "sensorcast_batch_size",
            "Records per poll micro-batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.rounds_per_batch = Histogram(
            "sensorcast_rounds_per_batch",
            "Model calls per micro-batch (one round per reading of the busiest stream).",
            buckets=_ROUND_BUCKETS,
            registry=r,
        )
        self.model_call_seconds = Histogram(
            "sensorcast_model_call_seconds",
            "Duration of one batched model call (one round).",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.reading_to_forecast_seconds = ArrayHistogram(
            "sensorcast_reading_to_forecast_seconds",
            "From a reading being written to Kafka (its record timestamp) to its forecast "
            "being handed to the producer; one observation per forecast.",
            _AGE_BUCKETS,
            r,
        )
        self.batch_seconds = Histogram(
            "sensorcast_batch_seconds",
            "From the poll that received a micro-batch to its forecasts being handed to the "
            "producer (decode, model rounds, encode, send).",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )

    def _declare_consumer(self, r: CollectorRegistry) -> None:
        """The input side: lag, assigned partitions, poll loop."""
        self.consumer_lag = Gauge(
            "sensorcast_consumer_lag",
            "Records in the input partition not yet consumed (high watermark minus position).",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "sensorcast_assigned_partitions",
            "Input partitions assigned to this member.",
            registry=r,
        )
        self.poll_iterations = Counter(
            "sensorcast_poll_loop_iterations", "Iterations of the poll loop.", registry=r
        )

    def _declare_checkpoints(self, r: CollectorRegistry) -> None:
        """Checkpoints: outcome, duration, what they wrote, and their pacing."""
        self.checkpoints = Counter(
            "sensorcast_checkpoints",
            "Checkpoints (flush forecasts, write changed states, commit offsets), by outcome.",
            ["outcome"],
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "sensorcast_checkpoint_seconds",
            "Time the poll loop spent in a checkpoint: the periodic one completes the "
            "checkpoint begun an interval before and sends the next one's states.",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.checkpoint_streams = Gauge(
            "sensorcast_checkpoint_streams",
            "Stream states (and tombstones) the last checkpoint wrote to the changelog.",
            registry=r,
        )
        self.checkpoint_bytes = Gauge(
            "sensorcast_checkpoint_bytes",
            "Bytes (keys and values) the last checkpoint wrote to the changelog.",
            registry=r,
        )
        self.changelog_write_seconds = Counter(
            "sensorcast_changelog_write_seconds",
            "Time the poll loop spent encoding changed states and handing them to the "
            "changelog producer.",
            registry=r,
        )
        self.checkpoint_interval = Gauge(
            "sensorcast_checkpoint_interval_seconds",
            "Seconds from the last periodic checkpoint to the next: kafka.commit_interval, or "
            "longer when its state writes take more than kafka.changelog_budget of that.",
            registry=r,
        )

    def _declare_changelog(self, r: CollectorRegistry) -> None:
        """The state changelog: records written, and restores from it."""
        self.changelog_records = Counter(
            "sensorcast_changelog_records",
            "Records written to the state changelog: `state` or `tombstone` (evicted, expired).",
            ["kind"],
            registry=r,
        )
        self.restore_seconds = Gauge(
            "sensorcast_restore_seconds",
            "Seconds the last restore of the partition took to read its changelog to the end.",
            ["partition"],
            registry=r,
        )
        self.restored_streams = Gauge(
            "sensorcast_restored_streams",
            "Streams the last restore of the partition loaded from its changelog.",
            ["partition"],
            registry=r,
        )

    def _declare_health(self, r: CollectorRegistry) -> None:
        """Health and identity: broker, readiness, model and build."""
        self.broker_reachable = Gauge(
            "sensorcast_broker_reachable",
            "1 while the last exchange with the broker succeeded, 0 otherwise.",
            registry=r,
        )
        self.ready = Gauge("sensorcast_ready", "1 when /readyz reports ready.", registry=r)
        self.model_info = Info("sensorcast_model", "The served model.", registry=r)
        self.model_swaps = Counter(
            "sensorcast_model_swaps",
            "New model versions found in the registry while serving, by outcome: swapped in "
            "(ok) or refused (failed: not loadable, not verified, not servable here).",
            ["outcome"],
            registry=r,
        )
        self.rewarms = Counter(
            "sensorcast_rewarms",
            "Streams whose state was re-warmed from their kept readings before their next "
            "reading, by reason: model_change (a hot swap), foreign_state (restored from "
            "another model's record), missing_history (no usable kept readings: reset).",
            ["reason"],
            registry=r,
        )
        self.rewarm_seconds = Histogram(
            "sensorcast_rewarm_seconds",
            "Model-call seconds of the re-warms one micro-batch ran.",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.build_info = Info("sensorcast_build", "The running build.", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})

    def record_batch(
        self,
        records: int,
        result: EngineResult | BatchResult,
        seconds: float,
        ages: np.ndarray | None = None,
    ) -> None:
        """Count one micro-batch: `records` consumed, what the engine did with them,
        `seconds` from the poll to the forecasts being handed to the producer, and each
        forecast's reading's `ages` (seconds since it was written to Kafka) at that moment."""
        self.readings_consumed.inc(records)
        self.batch_size.observe(records)
        self.batch_seconds.observe(seconds)
        if ages is not None:
            self.reading_to_forecast_seconds.observe_many(ages)
        if result.forecasts:
            self.forecasts_produced.inc(len(result.forecasts))
        self.rounds_per_batch.observe(len(result.round_sizes))
        for seconds in result.round_seconds:
            self.model_call_seconds.observe(seconds)
        if result.drops:
            for reason, n in Tally(reason for _, reason in result.drops).items():
                self.drops.labels(reason=str(reason)).inc(n)
        if result.resets:
            self.state_resets.inc(result.resets)
        if result.clock_resets:
            self.clock_resets.inc(result.clock_resets)
        if result.evicted:
            self.evictions.labels(cause="capacity").inc(len(result.evicted))
        if result.expired:
            self.evictions.labels(cause="ttl").inc(len(result.expired))
        if result.rewarms:
            for why, n in result.rewarms.items():
                self.rewarms.labels(reason=why).inc(n)
            self.rewarm_seconds.observe(result.rewarm_seconds)

    def record_state(
        self, streams: int, state_bytes: int, topic: str, lags: Mapping[int, int]
    ) -> None:
        """The gauges a checkpoint refreshes: active streams, their state's bytes, and the
        consumer lag of each input partition of `topic`."""
        self.active_streams.set(streams)
        self.state_bytes.set(state_bytes)
        for partition, lag in lags.items():
            self.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)

    def set_model(self, name: str, version: str, kind: str, fingerprint: str = "") -> None:
        """Label ``sensorcast_model_info`` with the served model."""
        self.model_info.info(
            {"name": name, "version": version, "kind": kind, "fingerprint": fingerprint}
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry) + self.accuracy.render()
