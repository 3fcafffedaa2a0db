"""Value types flowing through the engine: readings in, forecasts, rejects and drops out."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

__all__ = [
    "DropReason",
    "Forecast",
    "ForecastBatch",
    "Reading",
    "ReadingBatch",
    "Reject",
    "RejectReason",
]


class RejectReason(StrEnum):
    """Why a record could not become a reading; rejects go to the dead-letter topic."""

    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_STREAM_ID = "missing_stream_id"
    MISSING_KEY = "missing_key"  # a stream's readings must share a partition: key = stream id
    KEY_MISMATCH = "key_mismatch"
    PARTITION_MISMATCH = "partition_mismatch"  # the stream's readings arrive on another partition
    OUT_OF_RANGE = "out_of_range"  # far outside the feature's training range
    UNKNOWN_FEATURE = "unknown_feature"
    MISSING_FEATURE = "missing_feature"
    NON_NUMERIC = "non_numeric"
    NON_FINITE = "non_finite"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    OVERSIZED = "oversized"
    TOMBSTONE = "tombstone"
    INVALID = "invalid"


class DropReason(StrEnum):
    """Why a valid reading was not applied; drops are counted, not dead-lettered."""

    DUPLICATE = "duplicate"  # ts == last_ts
    LATE = "late"  # ts < last_ts
    ALREADY_APPLIED = "already_applied"  # offset <= applied_offset (replay after a crash)


@dataclass(slots=True)
class Reading:
    """One sensor reading of one stream, in raw units.

    `values` is keyed by feature name, or a list in the card's feature order. `partition`
    and `offset` locate the source record (-1 when there is none, as in tests).
    """

    stream_id: str
    ts: float
    values: dict[str, Any] | list[Any]
    partition: int = -1
    offset: int = -1
    received: float = 0.0


@dataclass(slots=True)
class Forecast:
    """The forecast made right after applying one reading, in original units.

    `values[k, j]` is target j at `horizon_ts[k]`. `anomaly` is the reading's anomaly score
    and `anomalous[j]` says whether its target j was over the threshold (None when
    forecasts are not scored).
    """

    stream_id: str
    ts: float
    horizon_ts: list[float]
    values: np.ndarray
    warm: bool
    partition: int = -1
    offset: int = -1
    received: float = 0.0
    anomaly: float = 0.0
    anomalous: np.ndarray | None = None


@dataclass(slots=True)
class Reject:
    """A record that cannot be applied, with the reason and a human-readable detail."""

    reason: RejectReason
    detail: str
    reading: Reading | None = None
    partition: int = -1
    offset: int = -1
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ReadingBatch:
    """Readings as columns: what the decoder hands the engine on the hot path.

    Row i is one reading: `stream_ids[i]`, `ts[i]` (float64 epoch seconds), `values[i]`
    (float32, the card's features in card order, NaN where a value is missing or not
    finite, for imputation), and where the record came from (`partitions`, `offsets`, -1
    when there is none) and when it was `received`. `problems` maps a row whose values
    could not be read to the reason and a detail; the engine rejects such a row (unless it
    is already applied), whatever its `values` row holds.
    """

    stream_ids: list[str]
    ts: np.ndarray
    values: np.ndarray
    partitions: np.ndarray
    offsets: np.ndarray
    received: np.ndarray
    problems: dict[int, tuple[RejectReason, str]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        stream_ids: list[str],
        ts: Any,
        values: Any,
        *,
        partitions: Any = -1,
        offsets: Any = -1,
        received: Any = 0.0,
        problems: dict[int, tuple[RejectReason, str]] | None = None,
    ) -> ReadingBatch:
        """A batch from anything array-like; scalars are broadcast to every row."""
        n = len(stream_ids)

        def column(a: Any, dtype: type) -> np.ndarray:
            return np.broadcast_to(np.asarray(a, dtype), (n,)).copy()

        rows = np.asarray(values, np.float32)
        if rows.ndim != 2 or rows.shape[0] != n:
            raise ValueError(f"values must be [{n}, n_features], got shape {rows.shape}")
        return cls(
            list(stream_ids),
            column(ts, np.float64),
            rows,
            column(partitions, np.int32),
            column(offsets, np.int64),
            column(received, np.float64),
            dict(problems or {}),
        )

    def __len__(self) -> int:
        return len(self.stream_ids)

    def reading(self, i: int) -> Reading:
        """Row `i` as a `Reading` (values as a list in card order, NaN where missing)."""
        return Reading(
            self.stream_ids[i],
            float(self.ts[i]),
            self.values[i].tolist(),
            int(self.partitions[i]),
            int(self.offsets[i]),
            float(self.received[i]),
        )


@dataclass(slots=True)
class ForecastBatch:
    """Forecasts as columns: row i is the forecast made right after applying one reading.

    `values[i, k, j]` is target j, in original units, at ``ts[i] + (k + 1) * period``
    (see `horizon_ts`); `warm[i]` says whether the stream had seen the card's warm-up steps.
    The other columns echo the reading's. When forecasts are scored, `anomaly[i]` is the
    anomaly score of the reading the forecast was made at and `anomalous[i, j]` says
    whether its target j was over the threshold (`service.core.scoring`); None otherwise.
    """

    stream_ids: list[str]
    ts: np.ndarray
    values: np.ndarray
    warm: np.ndarray
    partitions: np.ndarray
    offsets: np.ndarray
    received: np.ndarray
    period: float
    anomaly: np.ndarray | None = None
    anomalous: np.ndarray | None = None

    @classmethod
    def empty(cls, horizon: int, n_targets: int, period: float) -> ForecastBatch:
        """No forecasts, with `values` shaped ``[0, horizon, n_targets]``; `period` in seconds."""
        return cls(
            [],
            np.empty(0, np.float64),
            np.empty((0, horizon, n_targets), np.float32),
            np.empty(0, np.bool_),
            np.empty(0, np.int32),
            np.empty(0, np.int64),
            np.empty(0, np.float64),
            period,
        )

    def __len__(self) -> int:
        return len(self.stream_ids)

    def horizon_ts(self) -> np.ndarray:
        """``[n, horizon]`` float64: the time each forecast value is for."""
        steps = np.arange(1, self.values.shape[1] + 1, dtype=np.float64) * self.period
        return np.asarray(self.ts[:, None] + steps)

    def forecasts(self) -> list[Forecast]:
        """The rows as `Forecast` objects (for tests and tools; the hot path stays columnar)."""
        n = len(self)
        return list(
            map(
                Forecast,
                self.stream_ids,
                self.ts.tolist(),
                self.horizon_ts().tolist(),
                self.values,
                self.warm.tolist(),
                self.partitions.tolist(),
                self.offsets.tolist(),
                self.received.tolist(),
                [0.0] * n if self.anomaly is None else self.anomaly.tolist(),
                [None] * n if self.anomalous is None else list(self.anomalous),
            )
        )
