"""Waves: how a batch is cut into rounds of distinct streams, and put back together.

Wave k holds the k-th reading of each stream in the batch, so a stream's readings are
applied in order, one round each. A `Wave` holds the columns of one wave's readings and
their streams' marks; the checks narrow it to the readings that are applied. Each round
hands back a `Round`, and `in_row_order` joins the rounds' forecasts in batch row order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from service.core.readings import ForecastBatch, ReadingBatch
from service.core.scoring import AnomalyScores
from service.core.state import StateStore
from service.core.values import Problems

__all__ = ["Round", "Wave", "in_row_order", "is_one_wave", "waves"]

Round = tuple[np.ndarray | None, np.ndarray, np.ndarray, AnomalyScores | None]
"""What one round hands back: the batch rows it applied (None: all, in order), their
forecast values in original units, their warm flags and their readings' anomaly scores
(None when forecasts are not scored)."""


@dataclass(slots=True)
class Wave:
    """The readings of one wave as columns, with their streams' slots and marks."""

    rows: np.ndarray | None
    """The batch rows of the readings (None: every row, in order)."""
    ids: list[str]
    slots: np.ndarray
    """-1 for a stream without state."""
    ts: np.ndarray
    offsets: np.ndarray
    x: np.ndarray
    """Raw values ``[n, n_features]``, NaN where missing."""
    last_ts: np.ndarray
    """The stream's last applied reading's time; -inf for a stream without state."""
    applied: np.ndarray
    """The stream's last applied offset; -1 for a stream without state."""
    problems: Problems
    """Why readings cannot be applied, by position in the wave."""

    @classmethod
    def of(
        cls, batch: ReadingBatch, idx: np.ndarray | None, store: StateStore, slots: np.ndarray
    ) -> Wave:
        """The rows `idx` of `batch` (all of them, in order, when None); `slots` are the
        batch's as looked up before its first round."""
        if idx is None:
            ids = batch.stream_ids
            ts, offsets, x = batch.ts, batch.offsets, batch.values
            problems = dict(batch.problems)
        else:
            all_ids = batch.stream_ids
            ids = [all_ids[i] for i in idx.tolist()]
            ts, offsets, x = batch.ts[idx], batch.offsets[idx], batch.values[idx]
            problems = {}
            if batch.problems:
                problems = {
                    j: batch.problems[i] for j, i in enumerate(idx.tolist()) if i in batch.problems
                }
            # a stream new in an earlier round of this batch has a slot now
            slots = store.slots_of(ids)
        if len(slots) == 0 or slots.min() >= 0:
            last_ts, applied = store.last_ts_at(slots), store.applied_offset_at(slots)
        else:
            known = slots >= 0
            safe = np.where(known, slots, 0)
            last_ts = np.where(known, store.last_ts_at(safe), -np.inf)
            applied = np.where(known, store.applied_offset_at(safe), -1)
        return cls(idx, ids, slots, ts, offsets, x, last_ts, applied, problems)

    def __len__(self) -> int:
        return len(self.ids)

    def keep(self, accepted: np.ndarray) -> None:
        """Narrow the wave to the readings at positions `accepted` (the marks follow; the
        problems, by position, no longer apply)."""
        ids = self.ids
        self.ids = [ids[i] for i in accepted.tolist()]
        self.ts, self.offsets, self.x = self.ts[accepted], self.offsets[accepted], self.x[accepted]
        self.last_ts, self.applied = self.last_ts[accepted], self.applied[accepted]
        self.slots = self.slots[accepted]
        self.rows = accepted if self.rows is None else self.rows[accepted]
        self.problems = {}


def waves(ids: list[str], cap: int | None) -> Iterator[np.ndarray]:
    """Index arrays into a batch of `ids`: wave k holds each stream's k-th reading, in order.

    A wave with more streams than the capacity cap `cap` is cut into chunks that fit.
    """
    n = len(ids)
    if n == 0:
        return
    if len(set(ids)) == n:
        split: list[np.ndarray] = [np.arange(n)]
    else:
        # rank of each row among its stream's rows, by a stable sort on stream codes
        codes: dict[str, int] = {}
        code = np.fromiter((codes.setdefault(s, len(codes)) for s in ids), np.int64, n)
        by_stream = np.argsort(code, kind="stable")
        sorted_codes = code[by_stream]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        counts = np.diff(np.r_[starts, n])
        occurrence = np.empty(n, np.int64)
        occurrence[by_stream] = np.arange(n) - np.repeat(starts, counts)
        order = np.argsort(occurrence, kind="stable")
        sizes = np.bincount(occurrence)
        split = np.split(order, np.cumsum(sizes)[:-1])
    for wave in split:
        if cap is None or len(wave) <= cap:
            yield wave
        else:
            yield from (wave[i : i + cap] for i in range(0, len(wave), cap))


def is_one_wave(ids: list[str], slots: np.ndarray, store: StateStore) -> bool:
    """Whether `ids` (with their `slots`, -1 when unknown) name distinct streams.

    Known streams are told apart by `StateStore.claim` (which marks them used); only unknown
    ids go through a set (a set of 1,024 ids costs ~20 us).
    """
    known = slots >= 0
    if store.claim(slots[known]) is None:
        return False
    new = [ids[i] for i in np.flatnonzero(~known).tolist()]
    return len(set(new)) == len(new)


def in_row_order(batch: ReadingBatch, rounds: list[Round], period: float) -> ForecastBatch:
    """The forecasts of `rounds` over `batch` as one batch in row order; `period` in seconds."""
    scored = rounds[0][3] is not None
    rows = rounds[0][0]
    if len(rounds) == 1 and (rows is None or bool((rows[1:] > rows[:-1]).all())):
        rows, values, warm, anomaly = rounds[0]
        score = None if anomaly is None else anomaly.score
        over = None if anomaly is None else anomaly.over
    else:
        rows = np.concatenate([r[0] for r in rounds])
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        values = np.concatenate([r[1] for r in rounds])[order]
        warm = np.concatenate([r[2] for r in rounds])[order]
        score = over = None
        if scored:
            score = np.concatenate([r[3].score for r in rounds if r[3] is not None])[order]
            over = np.concatenate([r[3].over for r in rounds if r[3] is not None])[order]
    if rows is None:  # every row of the batch, in order
        return ForecastBatch(
            batch.stream_ids,
            batch.ts,
            values,
            warm,
            batch.partitions,
            batch.offsets,
            batch.received,
            period,
            score,
            over,
        )
    ids = batch.stream_ids
    return ForecastBatch(
        [ids[i] for i in rows.tolist()],
        batch.ts[rows],
        values,
        warm,
        batch.partitions[rows],
        batch.offsets[rows],
        batch.received[rows],
        period,
        score,
        over,
    )
