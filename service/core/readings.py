"""Value types flowing through the engine: readings in, forecasts, rejects and drops out."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

__all__ = ["DropReason", "Forecast", "Reading", "Reject", "RejectReason"]


class RejectReason(StrEnum):
    """Why a record could not become a reading; rejects go to the dead-letter topic."""

    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_STREAM_ID = "missing_stream_id"
    KEY_MISMATCH = "key_mismatch"
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

    `values[k, j]` is target j at `horizon_ts[k]`.
    """

    stream_id: str
    ts: float
    horizon_ts: list[float]
    values: np.ndarray
    warm: bool
    partition: int = -1
    offset: int = -1
    received: float = 0.0


@dataclass(slots=True)
class Reject:
    """A record that cannot be applied, with the reason and a human-readable detail."""

    reason: RejectReason
    detail: str
    reading: Reading | None = None
    partition: int = -1
    offset: int = -1
    extra: dict[str, str] = field(default_factory=dict)
