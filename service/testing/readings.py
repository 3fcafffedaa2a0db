"""Drive the engine with lists, no broker: readings in; forecasts, rejects and drops out.

`readings_for`, `interleave` and `random_batches` make the input; `drive` feeds it to a
`StreamEngine` and `ListSink` collects what came out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from service.core.engine import EngineResult, StreamEngine
from service.core.readings import DropReason, Forecast, Reading, Reject

__all__ = ["ListSink", "drive", "interleave", "random_batches", "readings_for"]


def readings_for(
    stream_id: str,
    values: np.ndarray | Sequence[Sequence[float]],
    *,
    features: Sequence[str] | None = None,
    start: float = 0.0,
    period: float = 60.0,
    partition: int = 0,
    first_offset: int = 0,
) -> list[Reading]:
    """One reading per row of `values` (``[T, n_features]``), `period` seconds apart.

    With `features` the values are dicts keyed by name, otherwise lists in card order.
    Offsets count up from `first_offset`; pass ``first_offset=-1`` for no offsets.
    """
    rows = np.asarray(values, np.float64).tolist()
    out = []
    for t, row in enumerate(rows):
        vals: dict[str, object] | list[object] = (
            dict(zip(features, row, strict=True)) if features is not None else list(row)
        )
        offset = -1 if first_offset < 0 else first_offset + t
        out.append(Reading(stream_id, start + t * period, vals, partition, offset))
    return out


def interleave(streams: Sequence[Sequence[Reading]], rng: np.random.Generator) -> list[Reading]:
    """A random merge of several streams' readings that keeps each stream's order."""
    owners = np.repeat(np.arange(len(streams)), [len(s) for s in streams])
    rng.shuffle(owners)
    cursors = [0] * len(streams)
    out = []
    for k in owners.tolist():
        out.append(streams[k][cursors[k]])
        cursors[k] += 1
    return out


def random_batches(
    readings: Sequence[Reading], rng: np.random.Generator, max_size: int
) -> list[list[Reading]]:
    """Cut `readings` into consecutive batches of random sizes in ``1..max_size``."""
    out = []
    i = 0
    while i < len(readings):
        size = int(rng.integers(1, max_size + 1))
        out.append(list(readings[i : i + size]))
        i += size
    return out


@dataclass
class ListSink:
    """Collects everything the engine produced, in order."""

    forecasts: list[Forecast] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    drops: list[tuple[Reading, DropReason]] = field(default_factory=list)
    results: list[EngineResult] = field(default_factory=list)

    def write(self, result: EngineResult) -> None:
        """Keep everything in `result`, after what was written before."""
        self.forecasts.extend(result.forecasts)
        self.rejects.extend(result.rejects)
        self.drops.extend(result.drops)
        self.results.append(result)

    def by_stream(self) -> dict[str, list[Forecast]]:
        """The forecasts grouped by stream id, each stream's in the order they came."""
        out: dict[str, list[Forecast]] = {}
        for f in self.forecasts:
            out.setdefault(f.stream_id, []).append(f)
        return out

    def values_of(self, stream_id: str) -> np.ndarray:
        """The forecasts of one stream stacked as ``[T, horizon, n_targets]``."""
        return np.stack([f.values for f in self.forecasts if f.stream_id == stream_id])


def drive(
    engine: StreamEngine,
    batches: Iterable[Sequence[Reading]],
    *,
    now: float | None = 0.0,
    sink: ListSink | None = None,
) -> ListSink:
    """Feed each batch to `engine.process` (all at wall-clock `now`) and collect the output."""
    sink = sink if sink is not None else ListSink()
    for batch in batches:
        sink.write(engine.process(batch, now=now))
    return sink
