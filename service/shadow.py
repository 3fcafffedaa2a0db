"""Champion and challenger: a second model run in shadow on the same micro-batches.

With ``model.shadow = NAME[:VERSION]`` the service runs that model beside the served one (the
champion): on every micro-batch, after the champion, with its own engine and per-stream
state, reading the same records with its own card's features. Its forecasts go to
``kafka.shadow_topic`` (default ``forecasts.shadow``), never to the forecast topic, and are
scored like the champion's, under their own ``model`` label, so the accuracy metrics compare
the two per target and step (docs/service.md, "Champion and challenger").

The challenger's state lives in memory only. A stream it does not hold, or holds behind the
champion (a restart, a partition handed over and back), is seeded from the champion's record
of it: the challenger keeps the champion's bookkeeping (applied offset, last timestamp) and
re-warms its own state from the champion's kept readings before its next reading, as a hot
swap would. It then applies exactly the readings the champion applies, and its forecasts
for a reading are those an uninterrupted challenger would make once the re-warm is behind it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from service.accuracy import ScoreLedger
from service.codec import ForecastEncoder, RawRecord, ReadingDecoder
from service.core.engine import StreamEngine
from service.transport import Sink

__all__ = ["Shadow"]

log = logging.getLogger(__name__)


class Shadow:
    """A challenger engine fed the champion's micro-batches (see the module doc)."""

    def __init__(self, engine: StreamEngine, ledger: ScoreLedger) -> None:
        self.engine = engine
        self.ledger = ledger
        self._encoder = ForecastEncoder(engine.card)
        self.seconds = 0.0  # spent in the challenger, for the logs and the benchmark

    def seed(self, champion: StreamEngine, stream_ids: Sequence[str]) -> int:
        """Before the champion applies a batch of `stream_ids`: seed the streams the
        challenger lacks, or holds behind the champion, from the champion's records (they
        are re-warmed on their next reading). Returns how many were seeded."""
        started = time.perf_counter()
        ids = list(dict.fromkeys(stream_ids))
        theirs = champion.store.slots_of(ids)
        mine = self.engine.store.slots_of(ids)
        known = theirs >= 0
        behind = known & (mine < 0)
        held = known & (mine >= 0)
        if held.any():
            ahead = champion.store.applied_offset_at(theirs[held])
            lagging = self.engine.store.applied_offset_at(mine[held]) < ahead
            behind[np.flatnonzero(held)[lagging]] = True
        seeded = [ids[i] for i in np.flatnonzero(behind).tolist()]
        if seeded:
            records = champion.store.dump_many(seeded)
            self.engine.store.load_many(list(zip(seeded, records, strict=True)), now=time.time())
        self.seconds += time.perf_counter() - started
        return len(seeded)

    def process(
        self,
        decoder: ReadingDecoder,
        records: Sequence[RawRecord],
        received: float,
        sink: Sink,
        mirror: bool,
    ) -> None:
        """The challenger's turn on a micro-batch the champion just applied: read the
        records with its card's features, apply them, send its forecasts to the shadow
        topic and hand its scores to its ledger. Its rejects and drops are the champion's to
        report; they are not dead-lettered twice."""
        started = time.perf_counter()
        engine = self.engine
        batch = decoder.decode_columns(records, received=received, values=engine.values).batch
        result = engine.process_batch(batch, now=received)
        self.ledger.add(result.scores)
        forecasts = result.forecasts
        messages = self._encoder.encode_batch(forecasts)
        partitions = forecasts.partitions.tolist() if mirror else None
        sink.send_shadows(forecasts.stream_ids, messages, partitions)
        self.seconds += time.perf_counter() - started

    def drop(self, stream_ids: Sequence[str]) -> None:
        """Streams the champion let go (moved away, evicted, expired)."""
        self.engine.store.drop(stream_ids)
