"""The engine's checks of readings against the card and their streams' state.

`ReadingChecks` holds what an `EngineConfig` and a model card say about readings and checks
a batch, or a `Wave` of it, in the engine's order (see `service.core.engine`):

- out-of-range values, over the whole batch (`check_ranges`): a problem, or clipped;
- missing values (`fill_missing`): imputed with the stream's last values, or a problem;
- order (`screen`): already applied, rejected (a value problem, a non-finite timestamp),
  duplicate, late; late readings that continue a stream's clock from before a jump ahead
  show that the jump was a bad timestamp (clock recovery), and their stream starts over;
- gaps (`gaps`) and the gap policy (`apply_gap_policy`, `remember_jumps`).

`clean` tells in a handful of reductions that a batch needs none of this. State changes
only through the store's methods.
"""

from __future__ import annotations

import numpy as np

from service.core.engineconfig import EngineConfig
from service.core.readings import DropReason, ReadingBatch, Reject, RejectReason
from service.core.state import StateStore
from service.core.waves import Wave
from service.modelcard import ModelCard

__all__ = ["ReadingChecks"]


class ReadingChecks:
    """The checks of readings that `config` asks for, against `card`."""

    def __init__(self, card: ModelCard, config: EngineConfig) -> None:
        self.card = card
        self.config = config
        self.max_gap = config.max_gap_periods * card.period  # the gap limit in seconds
        self._features = list(card.features)
        self._bounds = _value_bounds(card, config)

    def clean(self, batch: ReadingBatch, rows: np.ndarray) -> bool:
        """Whether `batch` needs no check: its streams are known and distinct (`rows` their
        bookkeeping, from `StateStore.claim`), and every reading is newer than its stream's
        last one by at most the gap limit, has an offset above its stream's applied one and
        only finite values.

        Told with a handful of reductions (NaN, in a timestamp or a value, fails every
        comparison).
        """
        if batch.problems:
            return False
        since = batch.ts - rows["last_ts"]
        if not (since.min() > 0 and since.max() <= self.max_gap):
            return False
        if not (batch.offsets > rows["applied"]).all():
            return False
        lowest = batch.values.min()
        return bool(lowest == lowest)  # NaN: a missing or non-finite value

    def check_ranges(self, batch: ReadingBatch) -> None:
        """Values beyond the card's training range widened by `out_of_range_margin`: the row
        becomes a problem (``out_of_range``), or the value is clipped in place. NaN (missing)
        values pass; they are imputed or rejected on their own."""
        if self._bounds is None or not len(batch.ts):
            return
        low, high = self._bounds
        x = batch.values
        outside = (x < low) | (x > high)
        if not outside.any():
            return
        if self.config.out_of_range == "clip":
            np.clip(x, low, high, out=x)
            return
        ranges = self.card.feature_ranges or []
        margin = self.config.out_of_range_margin
        for row in np.flatnonzero(outside.any(axis=1)).tolist():
            if row in batch.problems:
                continue
            batch.problems[row] = (
                RejectReason.OUT_OF_RANGE,
                "; ".join(
                    f"{self._features[j]}={float(x[row, j]):.6g} is outside "
                    f"[{float(low[j]):.6g}, {float(high[j]):.6g}] (training range "
                    f"{ranges[j][0]:.6g}..{ranges[j][1]:.6g} widened by {margin:g} std)"
                    for j in np.flatnonzero(outside[row]).tolist()
                ),
            )

    def fill_missing(self, wave: Wave, store: StateStore) -> None:
        """Readings of `wave` with NaN (missing or non-finite) values: filled with the
        stream's last values under last-value imputation, otherwise problems.

        A reading still lacking a value (a new stream, or a feature never seen) is a problem.
        """
        x, problems = wave.x, wave.problems
        impute = self.config.impute == "last"
        if impute:
            known = wave.slots >= 0
            safe = np.where(known, wave.slots, 0)
            previous = np.where(known[:, None], store.last_values_at(safe), np.nan)
            x = wave.x = np.where(np.isnan(x), previous, x)
        for i in np.flatnonzero(np.isnan(x).any(axis=1)).tolist():
            if i not in problems:
                lacking = [f for f, v in zip(self._features, x[i], strict=True) if v != v]
                problems[i] = (
                    RejectReason.MISSING_FEATURE,
                    f"no value for {', '.join(lacking)}"
                    + (" and no earlier value to impute" if impute else ""),
                )

    def screen(
        self,
        batch: ReadingBatch,
        wave: Wave,
        store: StateStore,
        rejects: list[tuple[int, Reject]],
        drops: list[tuple[int, DropReason]],
    ) -> int:
        """Narrow `wave` of `batch` to the readings to apply; the others go to `rejects` and
        `drops` by batch row: already applied, rejected (a value problem or a non-finite
        timestamp), duplicate, late. A late reading that recovers its stream's clock
        (`EngineConfig.clock_recovery`) is kept, and its stream reset to start over from it.

        Returns the number of streams whose clock was set back.
        """
        ts, last_ts, offsets = wave.ts, wave.last_ts, wave.offsets
        already = (offsets >= 0) & (offsets <= wave.applied)
        rejected = ~np.isfinite(ts)
        if wave.problems:
            rejected[list(wave.problems)] = True
        rejected &= ~already
        duplicate = (ts == last_ts) & ~already & ~rejected
        late = (ts < last_ts) & ~already & ~rejected
        recover = self._clock_recovery(store, wave.slots, ts, late)
        _report(batch, wave, already, rejected, duplicate, late, rejects, drops)
        accepted = np.flatnonzero(~(already | rejected | duplicate | late))
        wave.keep(accepted)
        if recover is None:
            return 0
        # the jump ahead was a bad timestamp: start the stream over from here
        recover = recover[accepted]
        store.reset(wave.slots[recover])
        wave.last_ts[recover] = -np.inf
        return int(np.count_nonzero(recover))

    def gaps(self, wave: Wave) -> tuple[np.ndarray, int]:
        """Which readings of `wave` come after a gap longer than the limit, and how many (a
        stream without an applied reading has last_ts -inf: no gap)."""
        gap = wave.ts - wave.last_ts > self.max_gap
        n_gaps = int(np.count_nonzero(gap))
        if n_gaps:
            gap &= wave.last_ts > -np.inf
            n_gaps = int(np.count_nonzero(gap))
        return gap, n_gaps

    def apply_gap_policy(self, store: StateStore, slots: np.ndarray, gap: np.ndarray) -> int:
        """The gap policy, before the round, for the readings `gap` of a wave with `slots`:
        under ``reset`` their streams' states start over. Returns the number reset."""
        if self.config.gap_policy != "reset":
            return 0
        store.reset(slots[gap])
        return int(np.count_nonzero(gap))

    def remember_jumps(
        self, store: StateStore, slots: np.ndarray, gap: np.ndarray, before: np.ndarray
    ) -> None:
        """After the round, under clock recovery: the clocks of the streams `gap` of `slots`
        jumped ahead from `before`, and readings continuing from there may yet show that the
        jump was a bad timestamp."""
        if self.config.clock_recovery:
            store.note_jumps(slots[gap], before[gap])

    def _clock_recovery(
        self, store: StateStore, slots: np.ndarray, ts: np.ndarray, late: np.ndarray
    ) -> np.ndarray | None:
        """Late readings that continue their stream's clock from before its last jump ahead
        (`StateStore.note_jumps`): counted, and once `EngineConfig.clock_recovery` of them
        came in a row, taken out of `late` (in place) and marked in the returned mask: the
        jump was a bad timestamp, and they apply to a fresh state. None when no row is."""
        if not self.config.clock_recovery or not late.any():
            return None
        rows = np.flatnonzero(late & (slots >= 0))
        if len(rows) == 0:
            return None
        run = store.continue_jumped_clock(slots[rows], ts[rows])
        due = run >= self.config.clock_recovery
        if not due.any():
            return None
        recover = np.zeros(len(late), np.bool_)
        recover[rows[due]] = True
        late &= ~recover
        return recover


def _value_bounds(card: ModelCard, config: EngineConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """The lowest and highest value accepted per feature: the card's training range widened
    by `out_of_range_margin` training standard deviations (None: no check). An angle the card
    encodes as sine and cosine has no range: every angle is one of its training range's."""
    ranges = card.feature_ranges
    if ranges is None or config.out_of_range == "accept":
        return None
    span = np.asarray(ranges, np.float64)
    inputs, std = card.inputs, card.scaler.features.std
    feature_std = [std[inputs.index(f)] if f in inputs else np.inf for f in card.features]
    margin = config.out_of_range_margin * np.asarray(feature_std, np.float64)
    return (span[:, 0] - margin).astype(np.float32), (span[:, 1] + margin).astype(np.float32)


def _report(
    batch: ReadingBatch,
    wave: Wave,
    already: np.ndarray,
    rejected: np.ndarray,
    duplicate: np.ndarray,
    late: np.ndarray,
    rejects: list[tuple[int, Reject]],
    drops: list[tuple[int, DropReason]],
) -> None:
    """Turn the masks over `wave` into rejects and drops by batch row (the rare path).

    A rejected reading without a value problem is rejected for its timestamp.
    """
    rows = np.arange(len(already)) if wave.rows is None else wave.rows
    for reason, mask in (
        (DropReason.ALREADY_APPLIED, already),
        (DropReason.DUPLICATE, duplicate),
        (DropReason.LATE, late),
    ):
        drops.extend((i, reason) for i in rows[mask].tolist())
    for i in np.flatnonzero(rejected).tolist():
        row = int(rows[i])
        ts = float(batch.ts[row])
        why, detail = wave.problems.get(
            i, (RejectReason.BAD_TIMESTAMP, f"timestamp {ts!r} is not finite")
        )
        partition, offset = int(batch.partitions[row]), int(batch.offsets[row])
        rejects.append((row, Reject(why, detail, None, partition=partition, offset=offset)))
