"""Cutting a micro-batch into runs: each stream's readings that can be applied in a row.

When streams have several readings in a micro-batch (a backfill, a replay, a few
high-rate sensors), the engine applies each stream's readings as sequences on the model's
time axis (`service.core.packed`) rather than one round per reading. A *run* is a stream's
readings that apply one after the other with nothing to decide between them: each has
finite values and timestamp and no problem, is newer than the one before it by at most the
gap limit, and has a higher offset. Whatever breaks a run (a reject, a drop, a gap, a
missing value, a new stream) is the *incident* that the engine's general round handles,
one reading per stream, before the stream's next run.

`RunPlan` sorts a batch's rows by stream once and marks where runs break between two
readings; whether a stream's next reading may start a run depends on its state at that
turn, which the engine checks (`RunPlan.starts_run`).
"""

from __future__ import annotations

import numpy as np

from service.core.readings import ReadingBatch
from service.core.state import StateStore

__all__ = ["RunPlan"]


class RunPlan:
    """A batch's rows by stream and where a run must break; see the module doc.

    Positions index the rows sorted by stream (`rows[position]` is a batch row) and
    `slots` are the batch's as looked up (-1 for new streams); stream s (`ids[s]`) has the
    positions ``first[s]`` to ``end[s]``, its rows in batch order.
    """

    def __init__(self, batch: ReadingBatch, max_gap: float, slots: np.ndarray) -> None:
        ids = batch.stream_ids
        n = len(ids)
        # streams told apart by their slots (-1: new), new ones by their ids
        key = slots.astype(np.int64)
        new = np.flatnonzero(key < 0)
        if len(new):
            codes: dict[str, int] = {}
            key[new] = -1 - np.fromiter(
                (codes.setdefault(ids[i], len(codes)) for i in new.tolist()), np.int64, len(new)
            )
        self.rows = np.argsort(key, kind="stable")
        by_stream = key[self.rows]
        self.first = np.flatnonzero(np.r_[True, by_stream[1:] != by_stream[:-1]])
        self.end = np.r_[self.first[1:], n]
        self.ids = [ids[i] for i in self.rows[self.first].tolist()]
        ts = self.ts = batch.ts[self.rows]
        offsets = self.offsets = batch.offsets[self.rows]
        # a reading that may be in a run at all: finite values and timestamp, no problem
        whole = ~np.isnan(batch.values).any(axis=1)
        whole &= np.abs(batch.ts) < np.inf
        if batch.problems:
            whole[list(batch.problems)] = False
        self.whole = whole[self.rows]
        # a reading that continues the run of the one before it
        follows = np.zeros(n, np.bool_)
        with np.errstate(invalid="ignore"):  # inf - inf: not whole, and not followed
            since = ts[1:] - ts[:-1]
        follows[1:] = (since > 0) & (since <= max_gap) & (offsets[1:] > offsets[:-1])
        follows &= self.whole
        follows[self.first] = False
        breaks = np.append(np.flatnonzero(~follows), n)
        # the position where the run through each position breaks (the next break after it)
        self.run_end = breaks[np.searchsorted(breaks, np.arange(n), side="right")]
        self.max_gap = max_gap

    def starts_run(self, positions: np.ndarray, slots: np.ndarray, store: StateStore) -> np.ndarray:
        """How many readings from each of `positions` (one per stream, whose `slots` are
        -1 when it holds no state) apply in a row to the stream's current state: 0 when
        the reading there is an incident."""
        known = slots >= 0
        safe = np.where(known, slots, 0)
        since = self.ts[positions] - store.last_ts_at(safe)
        ok = known & self.whole[positions]
        ok &= since > 0
        ok &= since <= self.max_gap
        ok &= self.offsets[positions] > store.applied_offset_at(safe)
        return np.where(ok, self.run_end[positions] - positions, 0)
