"""Every forecast scored against the readings that follow it, and each reading's anomaly score.

Each stream keeps its *outstanding forecasts* (`Outstanding`, a part of the `StateStore`):
the last `horizon` warm forecasts it made, in original units, each with the timestamp of the
reading it was made at, that reading's target values and the highest step already scored.
When the stream applies a reading at ``ts``, a forecast made at ``m`` is scored at step k
when ``|ts - (m + k * period)| <= period / 2``, ``1 <= k <= horizon`` and k is above the
highest step scored for that forecast so far (so a forecast's step is scored at most once,
even when readings come faster than the period). A pair adds, per target whose value the
reading carried (an imputed value is not an observation), one to the count, the absolute and
squared error, and persistence's absolute error: the forecast's base reading taken as the
naive forecast of the same target time. The sums go into a `ScoreSums` by the partition of
the reading (the service counts them when that partition's checkpoint commits).

A reading's *anomaly score* compares it with the forecast made for it one step earlier: per
target, the residual divided by the stream's running one-step error scale (the root of an
exponentially weighted mean of squared one-step residuals, seeded from the card's one-step
test error); the score is the largest over targets, and a target is over the threshold when
its standardized residual is. The residual enters the running scale clipped at the
threshold, so a spike does not teach the stream that spikes are normal. A reading without a
one-step forecast (a cold or new stream, after a gap) scores 0.

The outstanding forecasts belong to the model that made them: a model change clears them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.core.slots import grown
from service.modelcard import ModelCard

__all__ = [
    "ANOMALY_SMOOTHING",
    "AnomalyScores",
    "Outstanding",
    "ScoreSums",
    "add_pairs",
    "count_anomalies",
    "fold_residuals",
    "one_step_variance",
]

ANOMALY_SMOOTHING = 0.02
"""Weight of the newest squared one-step residual in a stream's running error scale (about
the last 50 readings)."""

# rows of a ScoreSums table
_COUNT, _ABS, _SQUARED, _PERSISTENCE = range(4)


def one_step_variance(card: ModelCard) -> np.ndarray:
    """Each target's one-step squared error on the card's test part, the anomaly scale's
    seed: ``test.h1.rmse.<target>`` squared when the card records it, else its mean
    one-step ARV times the target's training variance, else that variance."""
    variance = np.square(np.asarray(card.scaler.targets.std, np.float64))
    metrics = card.metrics
    rmse = [metrics.get(f"test.h1.rmse.{t}") for t in card.targets]
    if all(r is not None and r > 0 for r in rmse):
        return np.square(np.asarray(rmse, np.float64)).astype(np.float32)
    arv = metrics.get("test.h1.arv")
    if arv is not None and arv > 0:
        return (variance * arv).astype(np.float32)
    return variance.astype(np.float32)


@dataclass
class ScoreSums:
    """Scored pairs by partition: ``tables[p]`` is ``[4, horizon, n_targets]`` float64 (count,
    absolute error, squared error, persistence's absolute error by step and target), and
    ``anomalies[p]`` counts readings over the threshold per target."""

    horizon: int
    n_targets: int
    tables: dict[int, np.ndarray] = field(default_factory=dict)
    anomalies: dict[int, np.ndarray] = field(default_factory=dict)

    def table(self, partition: int) -> np.ndarray:
        """The (zeroed when new) table of `partition`."""
        table = self.tables.get(partition)
        if table is None:
            table = self.tables[partition] = np.zeros((4, self.horizon, self.n_targets))
        return table

    def anomaly_counts(self, partition: int) -> np.ndarray:
        """The (zeroed when new) anomaly counts of `partition`."""
        counts = self.anomalies.get(partition)
        if counts is None:
            counts = self.anomalies[partition] = np.zeros(self.n_targets, np.int64)
        return counts

    def add(self, other: ScoreSums) -> None:
        """Add `other`'s sums into these."""
        for p, table in other.tables.items():
            self.table(p)[...] += table
        for p, counts in other.anomalies.items():
            self.anomaly_counts(p)[...] += counts

    def pop(self, partitions: set[int] | None = None) -> ScoreSums:
        """Take out the sums of `partitions` (all when None), as a `ScoreSums` of their own."""
        keys = [
            p
            for p in set(self.tables) | set(self.anomalies)
            if partitions is None or p in partitions
        ]
        out = ScoreSums(self.horizon, self.n_targets)
        for p in keys:
            if p in self.tables:
                out.tables[p] = self.tables.pop(p)
            if p in self.anomalies:
                out.anomalies[p] = self.anomalies.pop(p)
        return out

    def total(self) -> tuple[np.ndarray, np.ndarray]:
        """The tables and the anomaly counts summed over partitions."""
        table = np.zeros((4, self.horizon, self.n_targets))
        anomalies = np.zeros(self.n_targets, np.int64)
        for t in self.tables.values():
            table += t
        for a in self.anomalies.values():
            anomalies += a
        return table, anomalies

    @property
    def scored(self) -> np.ndarray:
        """Pairs scored, ``[horizon, n_targets]``."""
        counts: np.ndarray = self.total()[0][_COUNT]
        return counts


@dataclass(frozen=True)
class AnomalyScores:
    """Per reading of a round: its score (0 without a one-step forecast) and which targets
    were over the threshold ``[n, n_targets]``."""

    score: np.ndarray
    over: np.ndarray


class Outstanding:
    """Each slot's outstanding forecasts and running one-step error scale; see the module doc.

    Arrays over slots: ``made[slot, e]`` the timestamp of forecast e's reading (NaN: none),
    ``done[slot, e]`` its highest step scored, ``base[slot, e, target]`` that reading's
    target values, ``values[slot, e, step, target]`` the forecast, ``head[slot]`` the next
    entry to write (a ring of `horizon` entries), ``scale[slot, target]`` the running mean
    squared one-step residual (0: not yet seen, the seed stands in).
    """

    def __init__(
        self,
        horizon: int,
        n_targets: int,
        period: float,
        *,
        enabled: bool = True,
        seed: np.ndarray | None = None,
        threshold: float = np.inf,
    ) -> None:
        self.enabled = enabled
        self.horizon = horizon if enabled else 0
        self.n_targets = n_targets
        self.period = period
        self.threshold = threshold
        self.seed = np.ones(n_targets, np.float32) if seed is None else np.asarray(seed, np.float32)
        e = self.horizon
        self.made = np.empty((0, e), np.float64)
        self.done = np.empty((0, e), np.int8)
        self.base = np.empty((0, e, n_targets), np.float32)
        self.values = np.empty((0, e, horizon, n_targets), np.float32)
        self.head = np.empty(0, np.int64)
        self.scale = np.empty((0, n_targets), np.float32)

    @property
    def bytes_per_stream(self) -> int:
        """Bytes one stream's outstanding forecasts and scale take."""
        e, t = self.horizon, self.n_targets
        return e * (8 + 1 + 4 * t + 4 * e * t) + 8 + 4 * t if self.enabled else 0

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays, full capacity included."""
        arrays = (self.made, self.done, self.base, self.values, self.head, self.scale)
        return sum(a.nbytes for a in arrays)

    def grow(self, new: int) -> None:
        """Grow the slot axis to `new` slots."""
        if not self.enabled:
            return
        self.made = grown(self.made, new)
        self.done = grown(self.done, new)
        self.base = grown(self.base, new)
        self.values = grown(self.values, new)
        self.head = grown(self.head, new)
        self.scale = grown(self.scale, new)

    def clear(self, slots: np.ndarray) -> None:
        """No outstanding forecast and no running scale for `slots` (new streams, another
        model's)."""
        if not self.enabled:
            return
        self.made[slots] = np.nan
        self.done[slots] = 0
        self.head[slots] = 0
        self.scale[slots] = 0.0

    def score(
        self,
        slots: np.ndarray,
        ts: np.ndarray,
        actual: np.ndarray,
        observed: np.ndarray | None,
        partitions: np.ndarray,
        sums: ScoreSums,
    ) -> np.ndarray:
        """Score the outstanding forecasts of `slots` (distinct) against their readings at
        `ts` with target values `actual` ``[n, n_targets]`` (`observed` says which the reading
        carried; None: all), adding to `sums` by `partitions`. Returns the one-step residuals
        ``[n, n_targets]``, NaN where no forecast was made for the reading one step earlier."""
        n = len(slots)
        residual = np.full((n, self.n_targets), np.nan, np.float32)
        if not self.enabled or not n:
            return residual
        made = self.made[slots]
        lag = ts[:, None] - made
        step = np.rint(lag / self.period)
        hit = np.abs(lag - step * self.period) <= self.period / 2
        hit &= step >= 1
        hit &= step <= self.horizon
        hit &= step > self.done[slots]
        rows, entries = np.nonzero(hit)
        if not len(rows):
            return residual
        k = step[rows, entries].astype(np.int64)
        # flat indexes into the arrays' (slot, entry) and (slot, entry, step) rows: one
        # gather each, several times faster than indexing the axes one by one
        e, t = self.horizon, self.n_targets
        forecast = slots[rows] * e + entries
        self.done.reshape(-1)[forecast] = k
        truth = actual[rows]
        error = truth - self.values.reshape(-1, t)[forecast * e + k - 1]
        naive = truth - self.base.reshape(-1, t)[forecast]
        one = k == 1
        residual[rows[one]] = error[one]
        add_pairs(sums, partitions[rows], k - 1, error, naive, observed, rows)
        if observed is not None:
            residual[~observed] = np.nan
        return residual

    def anomalies(
        self, slots: np.ndarray, residual: np.ndarray, partitions: np.ndarray, sums: ScoreSums
    ) -> AnomalyScores:
        """Standardize `residual` (from `score`) by each slot's running scale, count the
        targets over the threshold in `sums`, and fold the residuals (clipped at the
        threshold) into the running scales."""
        n = len(slots)
        if not self.enabled or not n:
            return AnomalyScores(np.zeros(n, np.float32), np.zeros((n, self.n_targets), np.bool_))
        z, self.scale[slots] = fold_residuals(
            self.scale[slots], residual, self.seed, self.threshold
        )
        return count_anomalies(z, self.threshold, partitions, sums)

    def remember(
        self, slots: np.ndarray, ts: np.ndarray, forecasts: np.ndarray, base: np.ndarray
    ) -> None:
        """Keep the forecasts ``[n, horizon, n_targets]`` made at `ts` from readings with
        target values `base` ``[n, n_targets]`` for `slots` (distinct, warm ones only)."""
        if not self.enabled or not len(slots):
            return
        at = self.head[slots]
        self.made[slots, at] = ts
        self.done[slots, at] = 0
        self.base[slots, at] = base
        self.values[slots, at] = forecasts
        self.head[slots] = (at + 1) % self.horizon

    # -- records ------------------------------------------------------------------------

    def ordered(
        self, slots: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The outstanding forecasts of `slots`, oldest entry first (made, done, base,
        values), and the running scales: what a state record keeps."""
        positions = (self.head[slots, None] + np.arange(self.horizon)) % self.horizon
        rows = slots[:, None]
        return (
            self.made[rows, positions],
            self.done[rows, positions],
            self.base[rows, positions],
            self.values[rows, positions],
            self.scale[slots],
        )

    def load(
        self,
        slots: np.ndarray,
        made: np.ndarray,
        done: np.ndarray,
        base: np.ndarray,
        values: np.ndarray,
        scale: np.ndarray,
    ) -> None:
        """Set the outstanding forecasts of `slots` from records (as `ordered` gives)."""
        if not self.enabled:
            return
        self.made[slots] = made
        self.done[slots] = done
        self.base[slots] = base
        self.values[slots] = values
        self.scale[slots] = scale
        self.head[slots] = 0


def fold_residuals(
    scale: np.ndarray, residual: np.ndarray, seed: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Standardize one-step `residual` ``[n, n_targets]`` (NaN: none) by running `scale`
    (0: not yet seen, `seed` stands in) and fold them, clipped at `threshold` scales, into it.
    Returns the standardized residuals (NaN where none) and the new scale."""
    variance = np.where(scale > 0, scale, seed)
    z = np.abs(residual) / np.sqrt(variance)
    known = ~np.isnan(z)
    clipped = np.minimum(np.square(np.where(known, residual, 0.0)), variance * threshold**2)
    updated = variance + ANOMALY_SMOOTHING * (clipped - variance)
    return z, np.where(known, updated, scale)


def count_anomalies(
    z: np.ndarray, threshold: float, partitions: np.ndarray, sums: ScoreSums
) -> AnomalyScores:
    """The anomaly scores of readings with standardized residuals `z` ``[n, n_targets]``
    (from `fold_residuals`), their targets over `threshold` counted in `sums` by
    `partitions`."""
    known = ~np.isnan(z)
    over = known & (z > threshold)
    score = np.where(known, z, 0.0).max(axis=1, initial=0.0).astype(np.float32)
    if over.any():
        for p in np.unique(partitions[over.any(axis=1)]).tolist():
            sums.anomaly_counts(p)[...] += over[partitions == p].sum(axis=0)
    return AnomalyScores(score, over)


def add_pairs(
    sums: ScoreSums,
    parts: np.ndarray,
    steps: np.ndarray,
    error: np.ndarray,
    naive: np.ndarray,
    observed: np.ndarray | None,
    rows: np.ndarray,
) -> None:
    """Add the pairs' counts and errors to `sums`, by partition, step and target."""
    h, t = sums.horizon, sums.n_targets
    if parts[0] == parts.min() == parts.max():  # one partition: the common micro-batch
        keys, index = parts[:1], np.zeros(len(parts), np.intp)
    else:
        keys, index = np.unique(parts, return_inverse=True)
    cell = index * h + steps if len(keys) > 1 else steps
    size = len(keys) * h
    # one bincount per quantity over (cell, target) pairs, the targets innermost: several
    # times faster than np.add.at, or than a bincount per target of strided columns
    pair = (cell[:, None] * t + np.arange(t)).reshape(-1)
    error64 = error.astype(np.float64)
    quantities = [np.abs(error64), np.square(error64), np.abs(naive.astype(np.float64))]
    summed = np.empty((4, size * t))
    if observed is None:
        summed[0] = np.repeat(np.bincount(cell, minlength=size), t)
    else:  # an imputed value is not an observation: it weighs nothing
        seen = observed[rows].astype(np.float64)
        quantities = [q * seen for q in quantities]
        summed[0] = np.bincount(pair, weights=seen.reshape(-1), minlength=size * t)
    for i, quantity in enumerate(quantities, start=1):
        summed[i] = np.bincount(pair, weights=quantity.reshape(-1), minlength=size * t)
    by_partition = summed.reshape(4, len(keys), h, t)
    for i, p in enumerate(keys.tolist()):
        sums.table(p)[...] += by_partition[:, i]
