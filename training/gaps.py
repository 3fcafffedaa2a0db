"""Gaps in training data: holes in a stream's readings too long to step over.

Within a stream, an interval longer than ``max_gap_periods`` periods between two readings
is a gap, the same rule as the service's ``engine.max_gap_periods``: after such a gap the
service resets the stream's state, so a model must not learn to carry state across one.
The policy says what to do about it:

- ``split`` cuts the stream at each gap into segments, each its own stream named
  ``<stream>#<k>`` (``k`` from 0 in time order; a stream without a gap keeps its name).
  Downstream a segment is a stream like any other: its state starts from zero, its first
  ``burn_in`` steps are left out of the loss, no target reaches across the gap, and the
  split by target time applies to it unchanged.
- ``refuse`` fails with one line naming the stream, the two timestamps and the gap.

Intervals shorter than the period (irregular readings) are no gaps and are left as they
are.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from training.errors import TrainingDataError
from training.timestamps import iso_time

__all__ = ["GAP_POLICIES", "SEGMENT_MARK", "split_at_gaps"]

log = logging.getLogger(__name__)

GAP_POLICIES = ("split", "refuse")
SEGMENT_MARK = "#"
"""Between a stream's id and its segment number: ``pump-3#1``."""


def split_at_gaps(
    table: pd.DataFrame, source: str, *, period: float, max_gap_periods: float, policy: str
) -> pd.DataFrame:
    """`table` (in stream and time order) with each stream cut into segments at its gaps
    under ``split``; the table itself when no stream has a gap.

    Raises `TrainingDataError` under ``refuse`` on the first gap, or when a segment's name
    is already a stream's.
    """
    if policy not in GAP_POLICIES:
        raise TrainingDataError(f"gaps must be one of {', '.join(GAP_POLICIES)}, got {policy!r}")
    if not max_gap_periods > 0:
        raise TrainingDataError(f"max_gap_periods must be positive, got {max_gap_periods}")
    limit = max_gap_periods * period
    stream = table["stream_id"].to_numpy()
    ts = table["ts"].to_numpy(np.float64)
    # gap[i]: a gap between row i and row i + 1 of the same stream
    gap = (stream[1:] == stream[:-1]) & (np.diff(ts) > limit)
    if not gap.any():
        return table
    if policy == "refuse":
        raise _refusal(source, stream, ts, gap, period, max_gap_periods)
    # segment number of each row: the gaps before it within its stream
    after_gap = pd.Series(np.concatenate([[False], gap]), index=table.index)
    segment = after_gap.groupby(table["stream_id"], sort=False).cumsum()
    has_gap = table["stream_id"].isin(set(stream[:-1][gap]))
    names = table["stream_id"].where(
        ~has_gap, table["stream_id"] + SEGMENT_MARK + segment.astype(str)
    )
    taken = set(stream) & set(names[has_gap])
    if taken:
        raise TrainingDataError(
            f"{source}: cutting streams at gaps would name a segment {sorted(taken)[0]!r}, "
            "already a stream's id; rename that stream or pass --gaps refuse"
        )
    log.info(
        "%s: cut %d stream(s) at %d gap(s) longer than %g periods (%g s) into %d segments",
        source,
        len(set(stream[:-1][gap])),
        int(gap.sum()),
        max_gap_periods,
        limit,
        int(names[has_gap].nunique()),
    )
    out = table.copy()
    out["stream_id"] = names
    return out


def _refusal(
    source: str,
    stream: np.ndarray,
    ts: np.ndarray,
    gap: np.ndarray,
    period: float,
    max_gap_periods: float,
) -> TrainingDataError:
    """The one line for the first gap (in stream and time order)."""
    i = int(np.argmax(gap))
    before, after = float(ts[i]), float(ts[i + 1])
    length = after - before
    more = int(gap.sum()) - 1
    others = f" ({more} more gap(s) in the data)" if more else ""
    return TrainingDataError(
        f"{source}: stream {stream[i]!r} has a gap of {length:g} s ({length / period:.3g} "
        f"periods of {period:g} s) between ts {before:.0f} ({iso_time(before)}) and "
        f"{after:.0f} ({iso_time(after)}), more than max_gap_periods={max_gap_periods:g}"
        f"{others}; pass --gaps split to cut streams at gaps, or a larger --max-gap-periods"
    )
