"""Scoring a run: several readings of each stream applied in a row, scored as if one by one.

`service.core.scoring` scores a round's readings (one per stream) against the streams'
outstanding forecasts. A run (`service.core.packed`) applies a stream's readings in one
model call, so a reading must be scored against the forecasts outstanding at its turn:
those kept from before the run and those the run's earlier readings made. `score_runs`
does that for all the readings at once, with the results of scoring them in order:

- the ring of `horizon` entries holds, at a stream's w-th warm reading of the run, the
  forecasts numbered w to w + horizon - 1 in the stream's order of making (0 to horizon - 1
  are those kept before the run, horizon onwards the run's), so each reading has `horizon`
  candidates;
- a forecast's step is scored at most once: a stream's timestamps increase along a run, so
  the steps one forecast hits never decrease, and a hit is scored when its step is above
  the forecast's highest step scored before the run and no earlier reading of the run hit
  the same step of the same forecast;
- the running one-step error scales are folded reading by reading (a recurrence), across
  streams at once.
"""

from __future__ import annotations

import numpy as np

from service.core.scoring import (
    ANOMALY_SMOOTHING,
    AnomalyScores,
    Outstanding,
    ScoreSums,
    add_pairs,
    count_anomalies,
)

__all__ = ["score_runs"]


def score_runs(
    outstanding: Outstanding,
    slots: np.ndarray,
    lengths: np.ndarray,
    ts: np.ndarray,
    actual: np.ndarray,
    forecasts: np.ndarray,
    warm: np.ndarray,
    partitions: np.ndarray,
    sums: ScoreSums,
) -> AnomalyScores:
    """Score runs of readings against the outstanding forecasts of `slots` (distinct), keep
    the runs' warm forecasts, and give each reading its anomaly score; see the module doc.

    The readings are slot-major (slot i's `lengths[i]` readings in order, after those of
    the slots before it): timestamps `ts`, target values `actual` ``[n, n_targets]`` (every
    one observed), the forecasts made at them ``[n, horizon, n_targets]`` in original units,
    whether each is `warm` (kept to be scored), and their `partitions`.
    """
    n, t = len(ts), outstanding.n_targets
    if not outstanding.enabled or not n:
        return AnomalyScores(np.zeros(n, np.float32), np.zeros((n, t), np.bool_))
    runs = _Runs(outstanding, slots, lengths, warm)
    residual, done_of = _score(outstanding, runs, ts, actual, forecasts, partitions, sums)
    _keep(outstanding, runs, done_of, ts, actual, forecasts)
    return _anomalies(outstanding, runs, residual, partitions, sums)


class _Runs:
    """Where each reading of the runs stands: its stream, its place in its run, and the
    forecasts outstanding at its turn."""

    def __init__(
        self, outstanding: Outstanding, slots: np.ndarray, lengths: np.ndarray, warm: np.ndarray
    ) -> None:
        h = self.horizon = outstanding.horizon
        n = int(lengths.sum())
        self.slots, self.lengths, self.warm = slots, lengths, warm
        self.starts = np.cumsum(lengths) - lengths
        self.stream = np.repeat(np.arange(len(slots)), lengths)
        self.position = np.arange(n) - self.starts[self.stream]
        self.made_at = np.flatnonzero(warm)  # the readings that made a kept forecast, in order
        made_before = np.cumsum(warm) - warm  # kept forecasts made before each reading, all runs
        self.first_made = made_before[self.starts]  # index into made_at of each run's first
        self.n_made = np.bincount(self.stream, weights=warm, minlength=len(slots)).astype(np.int64)
        self.head = outstanding.head[slots]
        # each reading's candidates: the stream's forecasts numbered w .. w + h - 1
        number = (made_before - self.first_made[self.stream])[:, None] + np.arange(h)
        self.number = number
        self.before = number < h  # kept from before the run (else the run's, number - h)
        # the reading that made each candidate of the run's (any valid row for the others)
        source = self.first_made[self.stream][:, None] + number - h
        made_at = self.made_at if len(self.made_at) else np.zeros(1, np.int64)
        self.source = made_at[np.clip(source, 0, len(made_at) - 1)]

    def ring_of(self, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        """The ring entries of candidates `cols` of readings `rows` (all of theirs: None)."""
        head = self.head[self.stream[rows]]
        entries: np.ndarray
        if cols is None:
            entries = (head[:, None] + self.number[rows]) % self.horizon
        else:
            entries = (head + self.number[rows, cols]) % self.horizon
        return entries


def _score(
    outstanding: Outstanding,
    runs: _Runs,
    ts: np.ndarray,
    actual: np.ndarray,
    forecasts: np.ndarray,
    partitions: np.ndarray,
    sums: ScoreSums,
) -> tuple[np.ndarray, np.ndarray]:
    """Score every reading's candidates; returns the one-step residuals (NaN: none) and,
    per reading, the highest step scored of the forecast it made (0: none)."""
    h, t, period = outstanding.horizon, outstanding.n_targets, outstanding.period
    n = len(ts)
    residual = np.full((n, t), np.nan, np.float32)
    # candidates' times and highest steps scored: the run's own, then those kept from
    # before the run, on the few readings that still see one
    made = ts[runs.source]
    done = np.zeros((n, h), np.int8)
    early = np.flatnonzero(runs.before[:, 0])
    if len(early):
        slot = runs.slots[runs.stream[early]][:, None]
        ring, before = runs.ring_of(early), runs.before[early]
        made[early] = np.where(before, outstanding.made[slot, ring], made[early])
        done[early] = np.where(before, outstanding.done[slot, ring], 0)
    lag = ts[:, None] - made
    step = np.rint(lag / period)
    hit = np.abs(lag - step * period) <= period / 2
    hit &= step >= 1
    hit &= step <= h
    hit &= step > done
    scored = np.where(hit, step, 0.0)
    # a hit is scored unless the reading before it in the run hit the same forecast at
    # the same step (the steps one forecast hits never decrease, so an earlier hit of
    # that step is also the previous reading's): there, the candidates are shifted by
    # whether that reading made a forecast
    previous = np.zeros_like(scored)
    previous[1:] = scored[:-1]
    shifted = np.zeros_like(scored)
    shifted[1:, :-1] = scored[:-1, 1:]
    made_one = np.zeros(n, np.bool_)
    made_one[1:] = runs.warm[:-1]
    previous = np.where(made_one[:, None], shifted, previous)
    previous[runs.position == 0] = 0.0
    hit &= scored != previous
    done_of = np.zeros(n, np.int8)  # the highest step scored of the forecast made at each
    # the common case, without pairs: a reading whose candidates are the forecasts of the
    # `horizon` readings just before it in its run, each hit at the step of its distance
    diagonal = np.flatnonzero(
        (runs.source == np.arange(n)[:, None] - np.arange(h, 0, -1)).all(axis=1)
        & ~runs.before[:, 0]
        & (step == np.arange(h, 0, -1)).all(axis=1)
        & hit.all(axis=1)
    )
    if len(diagonal):
        hit[diagonal] = False
        residual[diagonal] = _score_diagonal(diagonal, actual, forecasts, partitions, sums, done_of)
    flat = np.flatnonzero(hit)  # by reading, in order
    rows, cols = np.divmod(flat, h)
    if not len(rows):
        return residual, done_of
    k = step.reshape(-1)[flat].astype(np.int64)
    kept = runs.before.reshape(-1)[flat]
    source = runs.source.reshape(-1)[flat]
    truth = take_rows(actual, rows)
    predicted = take_rows(forecasts.reshape(-1, t), source * h + k - 1)
    based = take_rows(actual, source)
    old = np.flatnonzero(kept)
    if len(old):
        at, ring = runs.slots[runs.stream[rows[old]]], runs.ring_of(rows[old], cols[old])
        predicted[old] = outstanding.values[at, ring, k[old] - 1]
        based[old] = outstanding.base[at, ring]
        # the highest step scored of each forecast kept from before the run
        outstanding.done[at, ring] = k[old]
    error = truth - predicted
    add_pairs(sums, partitions[rows], k - 1, error, truth - based, None, rows)
    one = np.flatnonzero(k == 1)
    if len(one) > 1 and not (rows[one][1:] > rows[one][:-1]).all():
        # two forecasts hit one reading at step 1: the later ring entry's error stands,
        # as when a round scores them
        one = one[np.lexsort((runs.ring_of(rows[one], cols[one]), rows[one]))]
    residual[rows[one]] = error[one]
    new = np.flatnonzero(~kept) if len(old) else slice(None)
    own = source[new]
    np.maximum.at(done_of, own, k[new].astype(np.int8))
    return residual, done_of


def _score_diagonal(
    rows: np.ndarray,
    actual: np.ndarray,
    forecasts: np.ndarray,
    partitions: np.ndarray,
    sums: ScoreSums,
    done_of: np.ndarray,
) -> np.ndarray:
    """Score readings `rows` against the forecasts of the `horizon` readings before each, at
    the step of their distance; returns their one-step residuals. All steps at once, as
    ``[rows, step, target]`` arrays, rather than through one index per pair."""
    h = forecasts.shape[1]
    steps = np.arange(1, h + 1)
    made = rows[:, None] - steps  # [rows, step]: the reading each step's forecast was made at
    truth = actual[rows][:, None, :]
    error = truth - forecasts[made, steps - 1]
    naive = np.abs(truth - actual[made])
    absolute = np.abs(error)
    parts = partitions[rows]
    for p in np.unique(parts).tolist():
        mine = slice(None) if parts[0] == parts[-1] == p and (parts == p).all() else parts == p
        table = sums.table(p)
        table[0] += np.count_nonzero(parts[mine] == p)
        # summed in float64, squares included, without float64 copies of the arrays
        table[1] += absolute[mine].sum(axis=0, dtype=np.float64)
        table[2] += np.einsum("rkt,rkt->kt", error[mine], error[mine], dtype=np.float64)
        table[3] += naive[mine].sum(axis=0, dtype=np.float64)
    # the highest step scored of each forecast: the last reading's that scored it
    done_of[made] = steps
    residual: np.ndarray = error[:, 0]
    return residual


def _keep(
    outstanding: Outstanding,
    runs: _Runs,
    done_of: np.ndarray,
    ts: np.ndarray,
    actual: np.ndarray,
    forecasts: np.ndarray,
) -> None:
    """Put each run's last `horizon` warm forecasts in its stream's ring, with the highest
    step the run scored of each (`done_of`, by the reading that made it)."""
    h = outstanding.horizon
    made_at = runs.made_at
    if not len(made_at):
        return
    stream = runs.stream[made_at]
    number = np.arange(len(made_at)) - runs.first_made[stream]
    last = number >= runs.n_made[stream] - h
    at = runs.slots[stream[last]]
    ring = (runs.head[stream[last]] + number[last]) % h
    readings = made_at[last]
    outstanding.made[at, ring] = ts[readings]
    outstanding.done[at, ring] = done_of[readings]
    outstanding.base[at, ring] = actual[readings]
    outstanding.values[at, ring] = forecasts[readings]
    outstanding.head[runs.slots] = (runs.head + runs.n_made) % h


def _anomalies(
    outstanding: Outstanding,
    runs: _Runs,
    residual: np.ndarray,
    partitions: np.ndarray,
    sums: ScoreSums,
) -> AnomalyScores:
    """Fold the readings' one-step residuals into their streams' running scales, in the
    order of each run, with the float32 operations `fold_residuals` applies a round at a
    time (the scales are part of the state records, which must not depend on how readings
    were batched); their anomaly scores, counted in `sums`."""
    t = outstanding.n_targets
    longest = int(runs.lengths.max())
    # time-major: step j of every run, NaN where a run has no reading or no residual
    by_step = np.full((longest, len(runs.slots), t), np.nan, np.float32)
    by_step[runs.position, runs.stream] = residual
    known = ~np.isnan(by_step)
    squared = np.square(np.where(known, by_step, 0.0))
    gaps = np.flatnonzero(~known.all(axis=(1, 2))).tolist()  # steps with a residual missing
    limit = outstanding.threshold**2
    scale = outstanding.scale[runs.slots]
    # variance[j]: the variance before step j (the seed until a stream's first residual)
    variance = np.empty((longest + 1, *scale.shape), np.float32)
    variance[0] = np.where(scale > 0, scale, outstanding.seed)
    for j in range(longest):
        var, new = variance[j], variance[j + 1]
        np.multiply(var, limit, out=new)
        np.minimum(squared[j], new, out=new)
        new -= var
        new *= ANOMALY_SMOOTHING
        new += var
        if gaps and j == gaps[0]:
            gaps.pop(0)
            np.copyto(new, var, where=~known[j])
    seen = known.any(axis=0)
    outstanding.scale[runs.slots] = np.where(seen, variance[longest], scale)
    variance = variance[:longest]
    z = np.abs(by_step) / np.sqrt(variance)
    return count_anomalies(z[runs.position, runs.stream], outstanding.threshold, partitions, sums)


def take_rows(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``table[rows]`` of a C-contiguous 2-d `table`, its rows moved as opaque items (several
    times faster than fancy indexing rows of a few floats)."""
    table = np.ascontiguousarray(table)
    item = np.dtype((np.void, table.shape[1] * table.itemsize))
    taken: np.ndarray = table.view(item).reshape(-1).take(rows).view(table.dtype)
    return taken.reshape(len(rows), table.shape[1])
