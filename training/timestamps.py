"""Epoch timestamps for training data: a table's ``ts`` column and split boundaries.

Timestamps are epoch seconds throughout (the card's period, the split boundaries, the
service's readings). A numeric ``ts`` is read in ``ts_unit``: ``s`` (the default), ``ms``,
``us``, ``ns``, or ``auto`` for the coarsest of these in which every value falls between the
years 1 and 2500. Values that only make sense in a finer unit than the one given (epoch
milliseconds read as seconds reach the year 55840) are refused with one line naming the unit
they look like and the option that converts them. ISO-8601 strings and datetime columns are
read as they are, whatever ``ts_unit`` says. A split boundary (`parse_time`) is epoch
seconds or ISO-8601, never another unit.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from training.errors import TrainingDataError

__all__ = ["SECONDS_PER_YEAR", "TS_UNITS", "iso_time", "parse_time", "to_epoch_seconds"]

SECONDS_PER_YEAR = 365.2425 * 86_400.0
"""The mean Gregorian year."""

TS_UNITS = ("s", "ms", "us", "ns", "auto")
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
# Plausible epoch seconds: 0001-01-01 to 2500-01-01. Epoch milliseconds read as seconds
# land tens of thousands of years ahead, so the two ranges barely overlap (only
# milliseconds within the first half of 1970 look like seconds).
_EARLIEST, _LATEST = -62_135_596_800.0, 16_725_225_600.0


def parse_time(text: str | float) -> float:
    """Epoch seconds from a number or an ISO-8601 date/time (UTC unless it says otherwise).

    A number must be epoch seconds between the years 1 and 2500 (whatever the data's
    ``ts_unit``); anything else raises `TrainingDataError`.
    """
    number: float | None
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if not _EARLIEST <= number <= _LATEST:  # also NaN and infinities
            seen = _plausible_unit(np.array([number]))
            hint = f" (it looks like epoch {_UNIT_NAMES[seen]})" if seen else ""
            raise TrainingDataError(
                f"time {text!r} is not epoch seconds between the years 1 and 2500{hint}; "
                "split boundaries are epoch seconds or ISO-8601"
            )
        return number
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError) as exc:
        raise TrainingDataError(
            f"cannot read {text!r} as a time: use epoch seconds or ISO-8601"
        ) from exc
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    # Not a nanosecond subtraction, which overflows outside the years 1677-2262.
    return float(stamp.timestamp())


def to_epoch_seconds(ts: pd.Series, source: str, unit: str) -> pd.Series:
    """The ``ts`` column of `source` as float epoch seconds: numbers read in `unit` (one of
    `TS_UNITS`), ISO-8601 strings and datetimes as they are.

    Raises `TrainingDataError` for missing, infinite or true/false timestamps, and for
    numbers that are no epoch time in `unit` (naming the unit they look like).
    """
    if pd.api.types.is_bool_dtype(ts):
        raise TrainingDataError(f"{source}: column 'ts' holds true/false, not times")
    if pd.api.types.is_numeric_dtype(ts):
        if ts.isna().any():
            raise TrainingDataError(f"{source}: column 'ts' has missing timestamps")
        return _numeric_epoch(ts, source, unit)
    try:
        parsed = pd.to_datetime(ts, utc=True)
    except (ValueError, TypeError) as exc:
        raise TrainingDataError(
            f"{source}: column 'ts' is neither epoch seconds nor ISO-8601 times"
        ) from exc
    if parsed.isna().any():
        raise TrainingDataError(f"{source}: column 'ts' has missing timestamps")
    return (parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)


def _numeric_epoch(ts: pd.Series, source: str, unit: str) -> pd.Series:
    """Epoch seconds from numbers in `unit` (or the one `auto` detects), refusing values
    that cannot be epoch times in that unit."""
    raw = ts.to_numpy(np.int64 if pd.api.types.is_integer_dtype(ts) else np.float64)
    if not raw.size:
        return ts.astype(np.float64)
    if not np.isfinite(raw.astype(np.float64)).all():
        raise TrainingDataError(f"{source}: column 'ts' holds infinite timestamps")
    seen = _plausible_unit(raw)
    if unit == "auto":
        if seen is None:
            raise _not_epoch(raw, source)
        unit = seen
    per_second = _PER_SECOND[unit]
    if raw.dtype.kind == "i":  # exact whole seconds first: int64 nanoseconds exceed 2**53
        seconds = (raw // per_second).astype(np.float64) + (raw % per_second) / per_second
    else:
        seconds = raw.astype(np.float64) / per_second
    if seconds.min() >= _EARLIEST and seconds.max() <= _LATEST:
        return pd.Series(seconds, index=ts.index, name=ts.name)
    if seen is None:
        raise _not_epoch(raw, source)
    example = raw[np.argmax(np.abs(seconds))]
    shown = seconds[np.argmax(np.abs(seconds))]
    raise TrainingDataError(
        f"{source}: column 'ts' looks like epoch {_UNIT_NAMES[seen]}, not {_UNIT_NAMES[unit]} "
        f"(e.g. {example} is {iso_time(float(example) / _PER_SECOND[seen])} in {_UNIT_NAMES[seen]} "
        f"but the year {_year(shown)} in {_UNIT_NAMES[unit]}); pass --ts-unit {seen} to convert"
    )


def _plausible_unit(raw: np.ndarray) -> str | None:
    """The coarsest unit in which every value is an epoch time between the years 1 and 2500."""
    lo, hi = float(np.min(raw)), float(np.max(raw))
    for unit, per_second in _PER_SECOND.items():
        if _EARLIEST * per_second <= lo and hi <= _LATEST * per_second:
            return unit
    return None


def _not_epoch(raw: np.ndarray, source: str) -> TrainingDataError:
    example = raw[np.argmax(np.abs(raw.astype(np.float64)))]
    return TrainingDataError(
        f"{source}: column 'ts' is not an epoch time in s, ms, us or ns (e.g. {example} lies "
        "outside the years 1 to 2500 in each); use epoch seconds or ISO-8601"
    )


def iso_time(seconds: float) -> str:
    """Epoch seconds as ``2023-11-14T22:13:20Z`` (whole seconds, UTC)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _year(seconds: float) -> int:
    return math.floor(1970 + seconds / SECONDS_PER_YEAR)
