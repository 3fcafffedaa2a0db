"""Cutting a micro-batch into runs: each stream's readings that can be applied in a row.

When streams have several readings in a micro-batch (a backfill, a replay, a few
high-rate sensors), the engine applies each stream's readings as sequences on the model's
time axis (`service.core.packed`) rather than one round per reading. A *run* is a stream's
readings that apply one after the other with nothing to decide between them: each has
finite values and timestamp and no problem, is newer than the one before it by at most the
gap limit, and has a higher offset. Whatever breaks a run (a reject, a drop, a gap, a
missing value, a new stream) is the *incident* that the engine's general round handles,
one reading per stream, before the stream's next run. The readings a stream's state
already holds at the start of a batch (a replay after a restore) are dropped all at once.

`RunPlan` sorts a batch's rows by stream once and marks where runs break between two
readings; whether a stream's next reading may start a run depends on its state at that
turn, which the engine checks (`RunPlan.starts_run`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.core.readings import DropReason, ReadingBatch
from service.core.state import StateStore
from service.core.waves import Round

__all__ = ["RunPlan", "ranks"]


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

    def applied_before(self, slots: np.ndarray, store: StateStore) -> np.ndarray:
        """How many of each stream's first readings its state already holds (an offset at
        or below its applied one: a replay after a restore), for streams with `slots`
        (-1: none). They are dropped as already applied, whatever else they are."""
        applied = np.where(slots >= 0, store.applied_offset_at(np.maximum(slots, 0)), -1)
        counts = self.end - self.first
        held = self.offsets >= 0
        held &= self.offsets <= np.repeat(applied, counts)
        fresh = np.append(np.flatnonzero(~held), len(held))
        upto = np.minimum(fresh[np.searchsorted(fresh, self.first)], self.end)
        leading: np.ndarray = upto - self.first
        return leading

    def apply(
        self,
        slots: np.ndarray,
        store: StateStore,
        drops: list[tuple[int, DropReason]],
        *,
        run: Callable[[np.ndarray, np.ndarray, np.ndarray], Round],
        incident: Callable[[np.ndarray], Round | None],
    ) -> list[Round]:
        """Apply the batch turn by turn; returns what each call applied.

        First each stream's readings its state already holds are dropped (into `drops`).
        Then, while a stream has readings left, each turn runs every stream's next run,
        ``run(streams, positions, lengths)``, then every stream's next incident in one
        general round, ``incident(rows)``. `slots` are the streams' (-1: new; updated as
        the general rounds create them).
        """
        position = self.first.copy()
        held = self.applied_before(slots, store)
        if held.any():
            stale = self.rows[np.repeat(position, held) + ranks(held)]
            drops.extend((row, DropReason.ALREADY_APPLIED) for row in stale.tolist())
            position += held
        done: list[Round] = []
        live = np.flatnonzero(position < self.end)
        while len(live):
            at = position[live]
            lengths = self.starts_run(at, slots[live], store)
            running = np.flatnonzero(lengths)
            if len(running):
                done.append(run(live[running], at[running], lengths[running]))
            position[live] = at + lengths
            live = live[position[live] < self.end[live]]
            if not len(live):
                break
            applied = incident(self.rows[position[live]])
            if applied is not None:
                done.append(applied)
            position[live] += 1
            new = live[slots[live] < 0]
            if len(new):
                slots[new] = store.slots_of([self.ids[s] for s in new.tolist()])
            live = live[position[live] < self.end[live]]
        return done


def ranks(counts: np.ndarray) -> np.ndarray:
    """0 .. counts[i] - 1 for each i, one after the other."""
    total = int(counts.sum())
    out: np.ndarray = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    return out
