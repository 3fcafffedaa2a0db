"""One round: one model call that applies one reading to each of a set of distinct streams.

`RoundRunner.run` scores the streams' outstanding forecasts against the readings (and
gives each reading its anomaly score, `service.core.scoring`), gathers the streams' states
from the `StateStore`, turns the readings' values into the model's inputs (`service.core.inputs`, when the card derives any) and
scales them with the card's scaler, calls the `StepModel` once, scatters the new states back,
records the readings in the streams' bookkeeping, de-normalises the forecasts and keeps
the warm ones to be scored. The model
input and the scalers tiled to the round's size are kept from round to round.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from service.core.inputs import InputEncoder
from service.core.model import StepModel
from service.core.packed import run_packed
from service.core.runscoring import score_runs
from service.core.scoring import AnomalyScores, ScoreSums
from service.core.state import StateStore
from service.errors import InferenceError

__all__ = ["RoundOutput", "RoundRunner", "RunsOutput"]


class RoundOutput(NamedTuple):
    """One round's forecasts in original units ``[n, horizon, n_targets]``, warm flags,
    model call seconds, and the readings' anomaly scores (None when not scored)."""

    values: np.ndarray
    warm: np.ndarray
    seconds: float
    anomaly: AnomalyScores | None


class RunsOutput(NamedTuple):
    """Runs' forecasts in original units ``[n, horizon, n_targets]`` and warm flags per
    reading, each model call's readings and seconds, and the readings' anomaly scores (None
    when not scored)."""

    values: np.ndarray
    warm: np.ndarray
    sizes: list[int]
    seconds: list[float]
    anomaly: AnomalyScores | None


class _RoundBuffers(NamedTuple):
    """What a round of `batch` readings reuses: the model input and the tiled scalers."""

    batch: int
    x: np.ndarray  # [batch, 1, n_inputs], the model input
    x_rows: np.ndarray  # the same memory as [batch, n_inputs]
    x_mean: np.ndarray  # [batch, n_inputs]
    x_std: np.ndarray
    y_shape: tuple[int, ...]  # what the model must return
    values_shape: tuple[int, int, int]  # [batch, horizon, n_targets]
    y_std: np.ndarray  # [batch, horizon, n_targets]
    y_mean: np.ndarray


class RoundRunner:
    """Runs the rounds of one step model over a `StateStore`'s streams."""

    def __init__(self, model: StepModel, *, replace_anomalies: bool = False) -> None:
        self.model = model
        self.card = card = model.card
        self.replace_anomalies = replace_anomalies
        features = card.features
        self.targets = np.asarray(
            [features.index(t) if t in features else -1 for t in card.targets], np.intp
        )
        self._inputs = InputEncoder(card.features, card.derived)
        self._x_mean = np.asarray(card.scaler.features.mean, np.float32)
        self._x_std = np.asarray(card.scaler.features.std, np.float32)
        # tiled over the horizon, so de-normalising runs over rows of horizon * n_targets
        # values rather than an inner loop of n_targets (~10x faster with 3 targets)
        self._y_mean = np.tile(np.asarray(card.scaler.targets.mean, np.float32), card.horizon)
        self._y_std = np.tile(np.asarray(card.scaler.targets.std, np.float32), card.horizon)
        self._x_flat = np.empty((0, card.n_inputs), np.float32)
        self._y_shape = (card.horizon, card.n_targets)
        self._buffers = self._round_buffers(0)

    def run(
        self,
        store: StateStore,
        slots: np.ndarray,
        ts: np.ndarray,
        offsets: np.ndarray,
        x_raw: np.ndarray,
        now: float,
        rows: np.ndarray | None = None,
        *,
        partitions: np.ndarray | None = None,
        observed: np.ndarray | None = None,
        sums: ScoreSums | None = None,
    ) -> RoundOutput:
        """Apply one reading to each of `slots` (distinct, ready): score, gather, scale, one
        model call, scatter, bookkeeping. `ts` are epoch seconds, `x_raw` the raw values
        ``[n, n_features]``, `now` the wall-clock time. `rows`, the slots' bookkeeping from
        `StateStore.claim`, come with every offset known to be new. With `sums` (and a store
        that scores), the streams' outstanding forecasts are scored against the readings,
        by `partitions`, counting only target values `observed` ``[n, n_targets]`` (None:
        all). Raises `InferenceError` when the model's output has the wrong shape."""
        n = len(slots)
        scoring = store.scoring
        anomaly = None
        if sums is not None and scoring.enabled:
            parts = np.zeros(n, np.int32) if partitions is None else partitions
            actual = x_raw[:, self.targets]
            residual = scoring.score(slots, ts, actual, observed, parts, sums)
            anomaly = scoring.anomalies(slots, residual, parts, sums)
            if self.replace_anomalies and anomaly.over.any():
                x_raw = x_raw.copy()  # the batch's values stay as they were read
                expected = actual - np.nan_to_num(residual)
                x_raw[:, self.targets] = np.where(anomaly.over, expected, actual)
        buffers = self._buffers if self._buffers.batch == n else self._round_buffers(n)
        states = store.gather(slots, reuse=True)
        if self._inputs.identity:
            x_rows = np.subtract(x_raw, buffers.x_mean, out=buffers.x_rows)
        else:
            x_rows = self._inputs.encode(x_raw, ts, out=buffers.x_rows)
            x_rows -= buffers.x_mean
        x_rows /= buffers.x_std
        started = time.perf_counter()
        y, new_states = self.model.step(buffers.x, states)
        seconds = time.perf_counter() - started
        if y.shape != buffers.y_shape:
            raise InferenceError(
                f"{self.card.ref}: the model returned y of shape {y.shape}, expected "
                f"{buffers.y_shape}"
            )
        store.scatter(slots, new_states)
        steps = store.advance(
            slots,
            ts,
            offsets,
            now,
            x_raw if store.keeps_values else None,
            offsets_increase=rows is not None,
            rows=rows,
        )
        warm = steps >= self.card.warmup_steps
        # de-normalised in place: y is the model's fresh output (see `StepModel`), and a new
        # array of this size would be mapped and zeroed by the OS on every round
        if y.dtype != np.float32 or not y.flags.writeable:
            y = y.astype(np.float32)
        values = y.reshape(buffers.values_shape)
        values *= buffers.y_std
        values += buffers.y_mean
        if anomaly is not None:
            kept = np.flatnonzero(warm)
            scoring.remember(slots[kept], ts[kept], values[kept], x_raw[kept][:, self.targets])
        return RoundOutput(values, warm, seconds, anomaly)

    def run_runs(
        self,
        store: StateStore,
        slots: np.ndarray,
        lengths: np.ndarray,
        ts: np.ndarray,
        offsets: np.ndarray,
        x_raw: np.ndarray,
        now: float,
        *,
        partitions: np.ndarray,
        sums: ScoreSums | None = None,
    ) -> RunsOutput:
        """Apply `lengths[i]` readings in a row to each of `slots` (distinct, ready), each
        stream's readings as one sequence (`service.core.packed`): the same as a round per
        reading, in far fewer model calls. The readings are slot-major, each slot's in
        order: `ts`, `offsets` (each above the one before it, the first above the slot's
        applied offset), raw values `x_raw` with no missing value, and `partitions`. With
        `sums`, the readings are scored as `run` scores them (`service.core.runscoring`).
        Raises `InferenceError` when the model's output has the wrong shape."""
        calls = run_packed(self.model, store, slots, self._scaled(x_raw, ts), lengths)
        assert calls.y is not None
        steps = store.advance_runs(
            slots, lengths, ts, offsets, now, x_raw if store.keeps_values else None
        )
        starts = np.cumsum(lengths) - lengths
        stream = np.repeat(np.arange(len(slots)), lengths)
        steps = steps[stream] + (np.arange(len(ts)) - starts[stream]) + 1
        warm = steps >= self.card.warmup_steps
        values = calls.y
        flat = values.reshape(len(values), -1)
        flat *= self._y_std
        flat += self._y_mean
        anomaly = None
        if sums is not None and store.scoring.enabled:
            actual = x_raw[:, self.targets]
            anomaly = score_runs(
                store.scoring, slots, lengths, ts, actual, values, warm, partitions, sums
            )
        return RunsOutput(values, warm, calls.sizes, calls.seconds, anomaly)

    def rewarm(
        self,
        store: StateStore,
        slots: np.ndarray,
        ts: np.ndarray,
        values: np.ndarray,
        n: np.ndarray,
    ) -> float:
        """Run the model from the initial state of `slots` (distinct) over each one's last
        `n` readings of `values` (raw, ``[len(slots), K, n_features]``, right-aligned, taken
        at `ts` ``[len(slots), K]``), each slot's as one sequence (`service.core.packed`);
        the states are scattered back, nothing else is recorded. Returns the model calls'
        seconds."""
        store.reset(slots)
        some = np.flatnonzero(n > 0)
        if not len(some):
            return 0.0
        counts = n[some]
        starts = np.cumsum(counts) - counts
        stream = np.repeat(some, counts)
        k = values.shape[1]
        column = (
            k
            - counts[np.repeat(np.arange(len(some)), counts)]
            + (np.arange(int(counts.sum())) - np.repeat(starts, counts))
        )
        x = self._scaled(values[stream, column], ts[stream, column])
        calls = run_packed(self.model, store, slots[some], x, counts, outputs=False)
        return sum(calls.seconds)

    def _scaled(self, x_raw: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """The model inputs of readings (raw values `x_raw` at `ts`), scaled, float32."""
        if self._inputs.identity:
            x: np.ndarray = np.subtract(x_raw, self._x_mean, dtype=np.float32)
        else:
            x = self._inputs.encode(x_raw, ts)
            x -= self._x_mean
        x /= self._x_std
        return x

    def _round_buffers(self, batch: int) -> _RoundBuffers:
        """The model input and the scalers tiled for `batch` readings (the last size's are
        kept)."""
        if len(self._x_flat) < batch:
            # the model input, in memory kept from round to round (the model reads it only
            # during the call): fresh memory each round costs the model call ~2% at batch
            # 256, in cache misses
            self._x_flat = np.empty(
                (max(batch, 2 * len(self._x_flat)), self.card.n_inputs), np.float32
            )
        rows = self._x_flat[:batch]
        horizon, targets = self._y_shape
        # tiled per batch: one flat multiply-add is several times faster than a broadcast
        # over short rows of n_targets
        self._buffers = _RoundBuffers(
            batch,
            rows[:, None, :],
            rows,
            np.tile(self._x_mean, (batch, 1)),
            np.tile(self._x_std, (batch, 1)),
            (batch, 1, horizon, targets),
            (batch, horizon, targets),
            np.tile(self._y_std, batch).reshape(batch, horizon, targets),
            np.tile(self._y_mean, batch).reshape(batch, horizon, targets),
        )
        return self._buffers
