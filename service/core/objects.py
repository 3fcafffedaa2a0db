"""The adapter between `Reading` objects and the engine's columns (for tests and tools).

The engine works on a `ReadingBatch` and answers with a `BatchResult`; `StreamEngine.process`
takes a list of `Reading` objects instead, through `batch_of`, and answers with an
`EngineResult` of objects, through `result_of`. The hot path never comes here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.core.readings import Reading, ReadingBatch
from service.core.results import BatchResult, EngineResult
from service.core.values import FeatureValues

__all__ = ["batch_of", "result_of"]


def batch_of(readings: Sequence[Reading], values: FeatureValues) -> ReadingBatch:
    """`readings` as a `ReadingBatch`, their values checked with `values.matrix`."""
    matrix, problems = values.matrix([r.values for r in readings])
    return ReadingBatch(
        [r.stream_id for r in readings],
        np.array([r.ts for r in readings], np.float64),
        matrix,
        np.array([r.partition for r in readings], np.int32),
        np.array([r.offset for r in readings], np.int64),
        np.array([r.received for r in readings], np.float64),
        problems,
    )


def result_of(done: BatchResult, readings: Sequence[Reading]) -> EngineResult:
    """`done`, the result of processing `batch_of(readings)`, in objects: `Forecast` objects,
    and rejects and drops carrying their `Reading` (the rejects are `done`'s, updated)."""
    result = EngineResult(
        forecasts=done.forecasts.forecasts(),
        round_sizes=done.round_sizes,
        round_seconds=done.round_seconds,
        resets=done.resets,
        gaps=done.gaps,
        clock_resets=done.clock_resets,
        evicted=done.evicted,
        expired=done.expired,
        rewarms=done.rewarms,
        rewarm_seconds=done.rewarm_seconds,
        scores=done.scores,
    )
    for row, reject in zip(done.reject_rows, done.rejects, strict=True):
        reject.reading = readings[row]
    result.rejects = done.rejects
    result.drops = [(readings[row], reason) for row, reason in done.drops]
    return result
