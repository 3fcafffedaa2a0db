"""One micro-batch through the pipeline: decode -> engine -> encode -> sink -> dead letters.

`Processor.process` is all the loop does with the records of a poll. It decodes them into
columns, runs one engine call over every stream with a new reading, encodes the forecasts
and hands them to the sink (to the reading's partition number when the output topic mirrors
the input's partitions), notes which partition each stream lives on, dead-letters the
rejects, reports the drops, hands the forecast scores to the model's ledger (counted when
the checkpoint that wrote their states is acknowledged, `service.accuracy`) and records the
batch's metrics; then a challenger in shadow (`service.shadow`) takes its turn on the same
records. It returns the streams the
engine let go (evicted for capacity, expired by TTL), whose tombstones the next checkpoint
writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from service.accuracy import Scorekeeper
from service.codec import ForecastEncoder, RawRecord, ReadingDecoder, max_future_seconds
from service.config import KafkaSettings
from service.core.engine import StreamEngine
from service.core.model import OnnxStepModel
from service.core.state import StateStore
from service.deadletters import DeadLetters
from service.metrics import ServiceMetrics
from service.modelcard import ModelCard
from service.partitions import PartitionStreams
from service.shadow import Shadow
from service.transport import Sink

__all__ = ["Processor"]

log = logging.getLogger(__name__)


class Processor:
    """Turns a poll's records into forecasts and dead letters."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        engine: StreamEngine,
        sink: Sink,
        dead_letters: DeadLetters,
        streams: PartitionStreams,
        metrics: ServiceMetrics,
        mirror_partitions: bool,
        scores: Scorekeeper,
        shadow: Shadow | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._scores = scores
        self.shadow = shadow
        self._sink = sink
        self._dead_letters = dead_letters
        self._streams = streams
        self._metrics = metrics
        self._mirror = mirror_partitions
        self._use(engine.card)

    def _use(self, card: ModelCard) -> None:
        """Decode readings for, and encode forecasts of, the model of `card`."""
        k = self._settings
        self._decoder = ReadingDecoder(
            max_message_bytes=k.max_message_bytes,
            max_future_seconds=max_future_seconds(k, card),
            partition_of=self._streams.partition_of,
        )
        self._encoder = ForecastEncoder(card)
        self._ledger = self._scores.ledger(card)

    def swap_model(self, model: OnnxStepModel) -> None:
        """Serve `model` from the next micro-batch on (`StreamEngine.replace_model`: every
        stream is re-warmed by it before its next reading); its forecasts name it."""
        before = self._engine.card.ref
        self._engine.replace_model(model)
        card = model.card
        self._use(card)
        self._metrics.set_model(card.name, card.version, card.kind, model.fingerprint.hex())
        self._metrics.model_swaps.labels(outcome="ok").inc()
        log.info(
            "model swapped from=%s to=%s streams=%d (each re-warmed before its next reading)",
            before,
            card.ref,
            len(self._engine.store),
        )

    @property
    def store(self) -> StateStore:
        """The engine's state store."""
        return self._engine.store

    def process(self, records: Sequence[RawRecord]) -> list[str]:
        """Process one poll's records; return the streams the engine let go."""
        engine, sink = self._engine, self._sink
        received = time.time()
        decoded = self._decoder.decode_columns(records, received=received, values=engine.values)
        batch = decoded.batch
        shadow = self.shadow
        if shadow is not None:
            shadow.seed(engine, batch.stream_ids)
        result = engine.process_batch(batch, now=received)
        self._ledger.add(result.scores)
        forecasts = result.forecasts
        messages = self._encoder.encode_batch(forecasts)
        partitions = forecasts.partitions.tolist() if self._mirror else None
        sink.send_forecasts(forecasts.stream_ids, messages, partitions)
        self._streams.note_columns(batch.stream_ids, batch.partitions.tolist())
        rejects = decoded.rejects + result.rejects
        if rejects:
            self._dead_letters.rejected(rejects, records)
        if result.drops:
            self._dead_letters.dropped(batch, result.drops, records)
        if result.rewarms.get("missing_history"):
            log.warning(
                "streams reset: their kept readings cannot re-warm them for model=%s "
                "(a feature missing, or none kept) streams=%d",
                engine.card.ref,
                result.rewarms["missing_history"],
            )
        handed = time.time()
        self._metrics.record_batch(
            len(records), result, handed - received, decoded.ages(forecasts, handed)
        )
        gone = result.evicted + result.expired
        if shadow is not None:  # after the champion's forecasts are on their way
            shadow.process(self._decoder, records, received, sink, self._mirror)
            shadow.drop(gone)
        return gone

    def expire_idle(self) -> list[str]:
        """Expire the streams idle for longer than the TTL now, counted and logged; return
        them (the engine expires them at the start of every batch otherwise)."""
        expired = self._engine.process([], now=time.time()).expired
        if self.shadow is not None:
            self.shadow.drop(expired)
        if expired:
            self._metrics.evictions.labels(cause="ttl").inc(len(expired))
            log.info("streams expired streams=%d", len(expired))
        return expired
