"""Readings to replay: a CSV or Parquet long table, or a built-in dataset.

A long table has a ``stream_id`` column, a ``ts`` column (epoch seconds or ISO-8601) and
one numeric column per feature; an empty cell is a feature missing from that reading.
Built-ins: ``synthetic`` (the seeded simulator in `service.simulate`), ``sunspots`` (the
yearly record shipped with statsmodels: one stream, feature ``sunspots``, ``ts`` = 1 January
of each year) and ``la-haute-borne`` (four wind turbines' 10-minute SCADA readings
2014-2015 from the openoa wheel, repaired as training repairs them: `service.tools.haute_borne`). Files need pandas (and pyarrow for Parquet), from the ``train`` extra.

Whatever the source, a `ReadingTable` holds the readings in replay order: by time, streams
interleaved, each stream's own order kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import DataSourceError

__all__ = ["BUILTINS", "ReadingTable", "load_source", "parse_time", "read_table", "synthetic"]

BUILTINS = ("synthetic", "sunspots", "la-haute-borne")


@dataclass(frozen=True)
class ReadingTable:
    """Readings as columns, in replay order. ``values[i, f]`` is NaN where feature f is missing."""

    name: str
    stream_ids: list[str]
    ts: np.ndarray
    values: np.ndarray
    features: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.stream_ids)

    @property
    def n_streams(self) -> int:
        """Distinct streams in the table."""
        return len(set(self.stream_ids))

    def readings(self) -> Iterator[tuple[str, float, dict[str, float]]]:
        """(stream id, ts, {feature: value}) per reading; missing features are left out."""
        features = self.features
        complete = not np.isnan(self.values).any()
        for sid, ts, row in zip(
            self.stream_ids, self.ts.tolist(), self.values.tolist(), strict=True
        ):
            if complete:
                yield sid, ts, dict(zip(features, row, strict=True))
            else:
                yield sid, ts, {f: v for f, v in zip(features, row, strict=True) if v == v}

    def limit(self, streams: int | None = None, steps: int | None = None) -> ReadingTable:
        """Keep the first `streams` streams (in order of appearance) and `steps` readings of each."""
        if streams is None and steps is None:
            return self
        ids = np.asarray(self.stream_ids, dtype=object)
        _, first_seen, codes = np.unique(ids, return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first_seen))[codes]  # order of first appearance
        keep = np.ones(len(ids), dtype=bool)
        if streams is not None:
            keep &= rank < streams
        if steps is not None:
            order = np.argsort(codes, kind="stable")
            counts = np.bincount(codes)
            starts = np.repeat(np.cumsum(counts) - counts, counts)
            nth = np.empty(len(ids), dtype=np.int64)
            nth[order] = np.arange(len(ids)) - starts
            keep &= nth < steps
        return self._take(np.nonzero(keep)[0])

    def shifted(self, start_ts: float) -> ReadingTable:
        """The same readings with timestamps moved so that the first one is `start_ts`."""
        if not len(self):
            return self
        return ReadingTable(
            self.name,
            self.stream_ids,
            self.ts - self.ts.min() + start_ts,
            self.values,
            self.features,
        )

    def _take(self, index: np.ndarray) -> ReadingTable:
        ids = [self.stream_ids[i] for i in index.tolist()]
        return ReadingTable(self.name, ids, self.ts[index], self.values[index], self.features)


def parse_time(text: str | float) -> float:
    """Epoch seconds from a number, an ISO-8601 time (UTC unless it says otherwise) or ``now``."""
    if isinstance(text, int | float):
        return float(text)
    if text.strip().lower() == "now":
        return datetime.now(UTC).timestamp()
    try:
        value = float(text)
    except ValueError:
        try:
            stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise DataSourceError(
                f"cannot read {text!r} as a time: use epoch seconds, ISO-8601 or 'now'"
            ) from exc
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp()
    if not math.isfinite(value):
        raise DataSourceError(f"cannot read {text!r} as a time: not a finite number")
    return value


def synthetic(
    n_streams: int,
    n_steps: int,
    *,
    seed: int = 0,
    start_ts: float | None = None,
    period: float | None = None,
) -> ReadingTable:
    """The simulator's readings (gaps left out), time-major."""
    from service.simulate import DEFAULT_PERIOD, simulate

    kwargs: dict[str, Any] = {"seed": seed, "period": period or DEFAULT_PERIOD}
    if start_ts is not None:
        kwargs["start_ts"] = start_ts
    sim = simulate(n_streams, n_steps, **kwargs)
    t_idx, s_idx = np.nonzero(sim.present.T)  # step-major: every stream's reading at step k first
    ids = np.asarray(sim.stream_ids, dtype=object)[s_idx].tolist()
    return ReadingTable(
        "synthetic", ids, sim.ts[t_idx], sim.values[s_idx, t_idx, :], tuple(sim.features)
    )


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError as exc:
        raise DataSourceError(
            "reading a table file needs pandas (and pyarrow for Parquet): "
            "pip install 'sensorcast[train]'"
        ) from exc
    return pd


def _sunspots() -> ReadingTable:
    try:
        from statsmodels.datasets import sunspots
    except ImportError as exc:
        raise DataSourceError(
            "the sunspots dataset ships with statsmodels: pip install 'sensorcast[train]'"
        ) from exc
    raw = sunspots.load_pandas().data
    years = raw["YEAR"].astype(int).tolist()
    ts = np.array([datetime(y, 1, 1, tzinfo=UTC).timestamp() for y in years])
    values = raw["SUNACTIVITY"].to_numpy(dtype=np.float64)[:, None]
    return ReadingTable("sunspots", ["sunspots"] * len(years), ts, values, ("sunspots",))


def _haute_borne() -> ReadingTable:
    _pandas()  # the loader needs it: one line saying how to install it when it is missing
    from service.tools.haute_borne import load_haute_borne

    return _from_frame(load_haute_borne(), "la-haute-borne")


def read_table(path: Path) -> ReadingTable:
    """Read a CSV or Parquet long table; any problem raises one `DataSourceError` line."""
    pd = _pandas()
    if not path.is_file():
        raise DataSourceError(f"{path}: no such file (built-ins: {', '.join(BUILTINS)})")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, float_precision="round_trip")
    except ImportError as exc:
        raise DataSourceError(f"{path}: reading Parquet needs pyarrow: {_first_line(exc)}") from exc
    except Exception as exc:  # pandas and pyarrow raise many types for a malformed file
        raise DataSourceError(f"{path}: cannot read the table: {_first_line(exc)}") from exc
    return _from_frame(frame, str(path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _from_frame(frame: Any, source: str) -> ReadingTable:
    pd = _pandas()
    missing = [c for c in ("stream_id", "ts") if c not in frame.columns]
    if missing:
        raise DataSourceError(
            f"{source}: missing column(s) {', '.join(missing)}; "
            f"the table has {', '.join(map(str, frame.columns)) or 'no columns'}"
        )
    features = [str(c) for c in frame.columns if c not in ("stream_id", "ts")]
    if not features:
        raise DataSourceError(f"{source}: no feature columns besides stream_id and ts")
    if frame["stream_id"].isna().any():
        row = int(np.flatnonzero(frame["stream_id"].isna().to_numpy())[0])
        raise DataSourceError(f"{source}: row {row + 1} has no stream_id")
    ts = frame["ts"]
    if pd.api.types.is_numeric_dtype(ts):
        epoch = ts.to_numpy(dtype=np.float64)
    else:
        try:
            parsed = pd.to_datetime(ts, utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise DataSourceError(
                f"{source}: column 'ts' is neither epoch seconds nor ISO-8601 times ({_first_line(exc)})"
            ) from exc
        epoch = ((parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(
            dtype=np.float64
        )
    if not np.isfinite(epoch).all():
        row = int(np.flatnonzero(~np.isfinite(epoch))[0])
        raise DataSourceError(f"{source}: row {row + 1} has no timestamp")
    columns = []
    for name in features:
        try:
            columns.append(pd.to_numeric(frame[name]).to_numpy(dtype=np.float64))
        except (ValueError, TypeError) as exc:
            raise DataSourceError(
                f"{source}: column {name!r} is not numeric ({_first_line(exc)})"
            ) from exc
    values = np.stack(columns, axis=1) if columns else np.empty((len(frame), 0))
    if np.isinf(values).any():
        raise DataSourceError(f"{source}: feature columns hold infinite values")
    order = np.argsort(epoch, kind="stable")  # by time; a stream's equal stamps keep file order
    ids = frame["stream_id"].astype(str).to_numpy(dtype=object)[order].tolist()
    return ReadingTable(Path(source).name, ids, epoch[order], values[order], tuple(features))


def load_source(
    source: str,
    *,
    streams: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    start_ts: float | None = None,
    period: float | None = None,
) -> ReadingTable:
    """A built-in by name, or a file by path; limited to `streams` and `steps`, shifted to `start_ts`."""
    if source == "synthetic":
        return synthetic(streams or 100, steps or 288, seed=seed, start_ts=start_ts, period=period)
    if source == "sunspots":
        table = _sunspots()
    elif source == "la-haute-borne":
        table = _haute_borne()
    else:
        table = read_table(Path(source))
    table = table.limit(streams, steps)
    return table if start_ts is None else table.shifted(start_ts)
