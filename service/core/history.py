"""Each stream's last K applied readings, kept to re-warm its state for another model.

A recurrent state means nothing to any model but the one that wrote it. When the served
model changes (a hot swap, a restart on a new version, another replica's records during a
rolling update), the engine runs the new model from its initial state over the stream's
kept readings before it applies the next one (see `service.core.rewarm`). The readings are
kept in original units, as they were applied (after imputation and clipping), with their
timestamps, in a ring per slot: ``ts[slot, K]``, ``values[slot, K, features]``, the next
position to write and how many are kept.
"""

from __future__ import annotations

import numpy as np

from service.core.slots import grown

__all__ = ["History"]


class History:
    """The last `k` readings of `n_features` values of every slot; `k` may be 0 (none)."""

    def __init__(self, k: int, n_features: int) -> None:
        self.k = k
        self.n_features = n_features
        self.ts = np.empty((0, k), np.float64)
        self.values = np.empty((0, k, n_features), np.float32)
        self.head = np.empty(0, np.int64)  # the next position to write
        self.length = np.empty(0, np.int64)  # readings kept, at most k
        # why each slot's state must be re-warmed before its next reading (0: it need not;
        # see `REWARM_REASONS`), and how many must
        self.due = np.empty(0, np.uint8)
        self.n_due = 0

    def grow(self, new: int) -> None:
        """Grow the slot axis to `new` slots."""
        self.ts = grown(self.ts, new)
        self.values = grown(self.values, new)
        self.head = grown(self.head, new)
        self.length = grown(self.length, new)
        self.due = grown(self.due, new)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays, full capacity included."""
        arrays = (self.ts, self.values, self.head, self.length, self.due)
        return sum(a.nbytes for a in arrays)

    @property
    def bytes_per_stream(self) -> int:
        """Bytes one stream's kept readings take: what they add to the raw state."""
        return self.k * (8 + 4 * self.n_features)

    def start(self, slots: np.ndarray) -> None:
        """New streams: nothing kept."""
        self.head[slots] = 0
        self.length[slots] = 0

    def push(self, slots: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        """One applied reading per slot (distinct slots)."""
        if not self.k:
            return
        at = self.head[slots]
        self.ts[slots, at] = ts
        self.values[slots, at] = values
        self.head[slots] = (at + 1) % self.k
        self.length[slots] = np.minimum(self.length[slots] + 1, self.k)

    def push_runs(
        self, slots: np.ndarray, counts: np.ndarray, ts: np.ndarray, values: np.ndarray
    ) -> None:
        """`counts[i]` applied readings of slot i (distinct slots) in a row: `ts` and
        `values` slot-major, each slot's in order; only each slot's last `k` are written."""
        if not self.k:
            return
        k = self.k
        starts = np.cumsum(counts) - counts
        slot_of = np.repeat(np.arange(len(slots)), counts)
        position = np.arange(len(ts)) - starts[slot_of]
        last = np.flatnonzero(position >= counts[slot_of] - k)
        at = slots[slot_of[last]]
        head = self.head[slots]
        where = (head[slot_of[last]] + position[last]) % k
        self.ts[at, where] = ts[last]
        self.values[at, where] = values[last]
        self.head[slots] = (head + counts) % k
        self.length[slots] = np.minimum(self.length[slots] + counts, k)

    def ordered(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The kept readings of `slots`, oldest first and right-aligned (the kept ones
        last): timestamps ``[n, k]``, values ``[n, k, features]`` and how many are kept."""
        k = self.k
        if not k:
            n = len(slots)
            return (
                np.zeros((n, 0)),
                np.zeros((n, 0, self.n_features), np.float32),
                np.zeros(n, np.int64),
            )
        positions = (self.head[slots, None] + np.arange(k)) % k
        rows = slots[:, None]
        return self.ts[rows, positions], self.values[rows, positions], self.length[slots].copy()

    def load(
        self, slots: np.ndarray, ts: np.ndarray, values: np.ndarray, length: np.ndarray
    ) -> None:
        """Set the kept readings of `slots` from right-aligned ones (as `ordered` gives)."""
        if not self.k:
            return
        self.ts[slots] = ts
        self.values[slots] = values
        self.head[slots] = 0  # the ring starts at the oldest position
        self.length[slots] = length

    def clear(self, slots: np.ndarray) -> None:
        """Forget the kept readings of `slots`."""
        self.length[slots] = 0
        self.head[slots] = 0

    # -- re-warms -------------------------------------------------------------------------

    def mark(self, slots: np.ndarray, reason: int) -> None:
        """`slots` (distinct) are to be re-warmed for `reason` before their next reading."""
        if len(slots):
            self.n_due += int(np.count_nonzero(self.due[slots] == 0))
            self.due[slots] = reason

    def unmark(self, slots: np.ndarray) -> None:
        """`slots` (distinct) were re-warmed, or let go."""
        if self.n_due and len(slots):
            self.n_due -= int(np.count_nonzero(self.due[slots]))
            self.due[slots] = 0

    def resize(self, k: int, columns: list[int] | None, slots: np.ndarray) -> np.ndarray:
        """Keep `k` readings of the features `columns` (indexes into the current ones; None:
        the same) from now on, for the held `slots`; returns those of `slots` whose kept
        readings lack a feature (they are cleared)."""
        ts, values, length = self.ordered(slots)
        n_features = self.n_features if columns is None else len(columns)
        lacking = np.zeros(len(slots), np.bool_)
        if columns is not None and -1 in columns:
            lacking[:] = length > 0
        capacity = len(self.head)
        self.k, self.n_features = k, n_features
        self.ts = np.zeros((capacity, k), np.float64)
        self.values = np.zeros((capacity, k, n_features), np.float32)
        self.head = np.zeros(capacity, np.int64)
        self.length = np.zeros(capacity, np.int64)
        if k and not lacking.all():
            keep = min(k, ts.shape[1])
            if columns is not None and -1 not in columns:
                values = values[:, :, columns]
            if keep:
                self.ts[slots, k - keep :] = ts[:, ts.shape[1] - keep :]
                self.values[slots, k - keep :] = values[:, values.shape[1] - keep :]
            self.length[slots] = np.minimum(length, keep)
        return slots[lacking]
