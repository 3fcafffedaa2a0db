"""Training data: a long table (``stream_id``, ``ts``, feature columns), checked and split.

Sources are a CSV or Parquet file, or a built-in: ``sunspots`` (the yearly record
1700-2008 shipped with statsmodels; one stream, feature ``sunspots``, ``ts`` = 1 January of
each year), ``synthetic`` (the seeded simulator in `service.simulate`) or
``la-haute-borne`` (four wind turbines' 10-minute SCADA readings 2014-2015, shipped in the
openoa wheel; `service.tools.haute_borne`, which `sensorcast replay` reads too).

Bad input fails with one `TrainingDataError` line, unless a repair option says what to do:
``sort`` (unsorted timestamps within a stream), ``dedupe="first"|"last"`` (duplicate
timestamps within a stream), ``fill="ffill"`` (NaNs: carry the last value forward, then the
first value backward), ``ts_unit`` (numeric ``ts`` in another unit than epoch seconds).

Within a stream, an interval longer than ``max_gap_periods`` periods is a gap; ``gaps``
says whether streams are cut into segments there or the data refused (`training.gaps`).
The period is the median interval between readings (a built-in's own).

Timestamps are epoch seconds throughout; `training.timestamps` reads the ``ts`` column
(numbers in ``ts_unit``, ISO-8601 strings, datetimes) and the split boundaries.

Readings carry raw features; the model's inputs are those features with the ``derived``
encodings applied (angles as sine and cosine, calendar phases of ``ts``), computed by
`service.core.inputs.InputEncoder`, the code the service runs on each reading. The scaler is
over the inputs, and a target's column is its input column.

The split is chronological with explicit boundaries, applied to the *target* time: a
forecast belongs to the part its target timestamp falls in. ``train`` is ``ts < val_start``,
``val`` is ``val_start <= ts < test_start``, ``test`` is ``test_start <= ts < test_end``.
The scaler is fitted on the train part only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.core.inputs import InputEncoder
from service.errors import DataSourceError
from service.modelcard import DerivedInputs, Scaler, ScalerSet
from service.simulate import DEFAULT_PERIOD, simulate
from service.tools import haute_borne
from training.errors import TrainingDataError
from training.gaps import split_at_gaps
from training.timestamps import SECONDS_PER_YEAR, TS_UNITS, parse_time, to_epoch_seconds

__all__ = [
    "BUILTINS",
    "NEAR_CONSTANT",
    "Dataset",
    "Series",
    "Splits",
    "fit_scaler",
    "load_dataset",
    "near_constant",
    "near_constant_columns",
    "parse_time",  # re-exported from training.timestamps for its importers
]

BUILTINS = ("sunspots", "synthetic", haute_borne.NAME)

NEAR_CONSTANT = 1e-6
"""A column is near-constant when its std is at most this fraction of its mean's magnitude.

The model and the service compute in float32 (about 7 significant digits), so a spread
below a millionth of the values' magnitude is rounding, not signal."""


@dataclass(frozen=True)
class Series:
    """One stream's rows in time order: raw ``values[t, feature]`` at ``ts[t]``, and the
    model's ``inputs[t, input]`` (unscaled) computed from them."""

    stream_id: str
    ts: np.ndarray
    values: np.ndarray
    inputs: np.ndarray


@dataclass(frozen=True)
class Dataset:
    source: str
    table: pd.DataFrame
    features: list[str]
    targets: list[str]
    period: float
    fingerprint: str
    derived: DerivedInputs = field(default_factory=DerivedInputs)

    @property
    def encoder(self) -> InputEncoder:
        """What turns this table's raw features and timestamps into the model's inputs."""
        return InputEncoder(self.features, self.derived)

    @property
    def inputs(self) -> list[str]:
        """The model's input columns: the features with the derived encodings applied."""
        return self.derived.input_names(self.features)

    def series(self) -> list[Series]:
        out = []
        encoder = self.encoder
        for sid, rows in self.table.groupby("stream_id", sort=True):
            ts = rows["ts"].to_numpy(np.float64)
            values = rows[self.features].to_numpy(np.float32)
            out.append(Series(str(sid), ts, values, encoder.encode(values, ts)))
        return out

    def input_values(self, rows: pd.DataFrame) -> np.ndarray:
        """The model's inputs ``[n, n_inputs]`` (float64, unscaled) of rows of the table."""
        values: np.ndarray = rows[self.features].to_numpy(np.float64)
        if self.derived.empty:
            return values
        encoded = self.encoder.encode(values, rows["ts"].to_numpy(np.float64))
        return encoded.astype(np.float64)

    @property
    def target_index(self) -> list[int]:
        """Each target's column among the inputs (a target is never an encoded angle)."""
        return [self.inputs.index(t) for t in self.targets]


@dataclass(frozen=True)
class Splits:
    """Boundaries in epoch seconds; ``test_end`` None means to the end of the data."""

    val_start: float
    test_start: float
    test_end: float | None = None

    def __post_init__(self) -> None:
        end = np.inf if self.test_end is None else self.test_end
        if not self.val_start <= self.test_start < end:
            raise TrainingDataError(
                "split boundaries must satisfy val_start <= test_start < test_end, got "
                f"{self.val_start}, {self.test_start}, {self.test_end}"
            )

    def part(self, ts: np.ndarray, name: str) -> np.ndarray:
        """Boolean mask of the timestamps in part `name` (train, val or test)."""
        if name == "train":
            return ts < self.val_start
        if name == "val":
            return (ts >= self.val_start) & (ts < self.test_start)
        if name == "test":
            end = np.inf if self.test_end is None else self.test_end
            return (ts >= self.test_start) & (ts < end)
        raise ValueError(f"unknown part {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "val_start": self.val_start,
            "test_start": self.test_start,
            "test_end": self.test_end,
            "rule": "a forecast belongs to the part its target timestamp falls in",
        }


def load_dataset(
    source: str,
    *,
    features: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    sort: bool = False,
    dedupe: str | None = None,
    fill: str | None = None,
    n_streams: int = 200,
    n_steps: int = 2000,
    seed: int = 0,
    ts_unit: str = "s",
    gaps: str = "split",
    max_gap_periods: float = 10.0,
    derived: DerivedInputs | None = None,
) -> Dataset:
    """Read `source` (a built-in name or a file), check it, cut its streams at gaps (or
    refuse them, as `gaps` says) and return the clean table, whose model inputs are its
    features with the `derived` encodings applied."""
    if ts_unit not in TS_UNITS:
        raise TrainingDataError(f"ts_unit must be one of {', '.join(TS_UNITS)}, got {ts_unit!r}")
    if source == "sunspots":
        table, period = _sunspots(), SECONDS_PER_YEAR
    elif source == "synthetic":
        table, period = _synthetic(n_streams, n_steps, seed), DEFAULT_PERIOD
    elif source == haute_borne.NAME:
        try:
            table, period = haute_borne.load_haute_borne(), haute_borne.PERIOD
        except DataSourceError as exc:  # openoa missing, or without the archive
            raise TrainingDataError(str(exc)) from exc
    else:
        table, period = _read_file(Path(source)), 0.0
    if source in BUILTINS and ts_unit not in ("s", "auto"):
        raise TrainingDataError(f"{source}: a built-in is stamped in seconds; drop --ts-unit")
    table = _check(table, source, features, sort=sort, dedupe=dedupe, fill=fill, ts_unit=ts_unit)
    feats = (
        list(features) if features else [c for c in table.columns if c not in ("stream_id", "ts")]
    )
    tgts = list(targets) if targets else list(feats)
    missing = [t for t in tgts if t not in feats]
    if missing:
        raise TrainingDataError(f"{source}: targets {missing} are not among the features {feats}")
    derived = derived or DerivedInputs()
    _check_derived(source, derived, feats, tgts)
    table = table[["stream_id", "ts", *feats]].reset_index(drop=True)
    if period == 0.0:
        period = _median_period(table, source)
    table = split_at_gaps(
        table, source, period=period, max_gap_periods=max_gap_periods, policy=gaps
    )
    return Dataset(source, table, feats, tgts, period, _fingerprint(table), derived)


def _check_derived(
    source: str, derived: DerivedInputs, features: list[str], targets: list[str]
) -> None:
    """One line for angles that are not features, or are targets."""
    unknown = [a for a in derived.angles if a not in features]
    if unknown:
        raise TrainingDataError(
            f"{source}: --angles {','.join(unknown)}: not among the features {features}"
        )
    angular = [t for t in targets if t in derived.angles]
    if angular:
        raise TrainingDataError(
            f"{source}: target(s) {','.join(angular)} cannot be --angles: an angle's forecast "
            "as a number is not meaningful across 0/360; leave them out of --targets"
        )
    names = derived.input_names(features)
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise TrainingDataError(
            f"{source}: column(s) {','.join(clash)} clash with the derived inputs' names; "
            "rename them"
        )


def fit_scaler(dataset: Dataset, splits: Splits) -> ScalerSet:
    """Mean and std of each input over the train part only (no later value leaks in).

    A near-constant column (see `near_constant`) gets std 1: its scaled values are the raw
    departures from the training mean, zero while it stays constant.
    """
    rows = dataset.table[dataset.table["ts"] < splits.val_start]
    if len(rows) < 2:
        raise TrainingDataError(
            f"{dataset.source}: fewer than 2 rows before val_start={splits.val_start}; move the boundary"
        )
    values = dataset.input_values(rows)
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    std = np.where(near_constant(mean, std), 1.0, std)
    idx = dataset.target_index
    return ScalerSet(
        features=Scaler(mean=mean.tolist(), std=std.tolist()),
        targets=Scaler(mean=mean[idx].tolist(), std=std[idx].tolist()),
    )


def near_constant(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per column, whether ``std <= NEAR_CONSTANT * |mean|`` (always so for a zero std)."""
    flat: np.ndarray = np.asarray(std) <= NEAR_CONSTANT * np.abs(np.asarray(mean))
    return flat


def near_constant_columns(dataset: Dataset, splits: Splits) -> dict[str, str]:
    """The near-constant input columns on the train part, each with a short description
    of its values (``14.62 in every row`` or ``14.62 +- 3e-09``)."""
    rows = dataset.table[dataset.table["ts"] < splits.val_start]
    values = dataset.input_values(rows)
    if not len(values):
        return {}
    mean, std = values.mean(axis=0), values.std(axis=0)
    out = {}
    for col in np.nonzero(near_constant(mean, std))[0]:
        same = bool((values[:, col] == values[0, col]).all())
        spread = "in every row" if same else f"+- {std[col]:.1g}"
        out[dataset.inputs[col]] = f"{mean[col]:.6g} {spread}"
    return out


# -- sources ----------------------------------------------------------------------------------


def _sunspots() -> pd.DataFrame:
    from statsmodels.datasets import sunspots

    raw = sunspots.load_pandas().data
    years = raw["YEAR"].astype(int).to_numpy()
    ts = [datetime(int(y), 1, 1, tzinfo=UTC) for y in years]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return pd.DataFrame(
        {
            "stream_id": "sunspots",
            "ts": [(t - epoch).total_seconds() for t in ts],
            "sunspots": raw["SUNACTIVITY"].astype(np.float64).to_numpy(),
        }
    )


def _synthetic(n_streams: int, n_steps: int, seed: int) -> pd.DataFrame:
    sim = simulate(n_streams, n_steps, seed=seed)
    s_idx, t_idx = np.nonzero(sim.present)
    table = pd.DataFrame({"stream_id": np.asarray(sim.stream_ids)[s_idx], "ts": sim.ts[t_idx]})
    for f, name in enumerate(sim.features):
        table[name] = sim.values[s_idx, t_idx, f].astype(np.float64)
    return table


def _read_file(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise TrainingDataError(f"{path}: no such file (or a built-in: {', '.join(BUILTINS)})")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, float_precision="round_trip")  # the same floats on any pandas
    except Exception as exc:  # pandas and pyarrow raise many types for a bad file
        raise TrainingDataError(
            f"{path}: cannot read the table ({type(exc).__name__}: {exc})"
        ) from exc


# -- checks and repairs -----------------------------------------------------------------------


def _check(
    table: pd.DataFrame,
    source: str,
    features: Sequence[str] | None,
    *,
    sort: bool,
    dedupe: str | None,
    fill: str | None,
    ts_unit: str,
) -> pd.DataFrame:
    """`table` typed, checked and repaired as asked (`sort`, `dedupe`, `fill`), in stream and
    time order; `TrainingDataError` naming the flag to pass when a problem needs one."""
    if dedupe not in (None, "first", "last"):
        raise TrainingDataError(f"dedupe must be 'first' or 'last', got {dedupe!r}")
    if fill not in (None, "ffill"):
        raise TrainingDataError(f"fill must be 'ffill', got {fill!r}")
    table, cols = _typed(table, source, features, ts_unit)
    table = _in_time_order(table, source, sort=sort)
    table = _deduplicated(table, source, dedupe)
    table = _filled(table, source, cols, fill)
    if not np.isfinite(table[cols].to_numpy()).all():
        raise TrainingDataError(f"{source}: feature columns hold infinite values")
    return table.sort_values(["stream_id", "ts"], kind="stable")


def _typed(
    table: pd.DataFrame, source: str, features: Sequence[str] | None, ts_unit: str
) -> tuple[pd.DataFrame, list[str]]:
    """A copy with string stream ids, epoch-second timestamps and float64 features; and the
    feature columns (`features`, or every column besides stream_id and ts)."""
    required = ["stream_id", "ts", *(features or [])]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise TrainingDataError(
            f"{source}: missing column(s) {', '.join(missing)}; the table has {', '.join(map(str, table.columns))}"
        )
    table = table.copy()
    table["stream_id"] = table["stream_id"].astype(str)
    table["ts"] = to_epoch_seconds(table["ts"], source, ts_unit)
    cols = (
        list(features) if features else [c for c in table.columns if c not in ("stream_id", "ts")]
    )
    if not cols:
        raise TrainingDataError(f"{source}: no feature columns besides stream_id and ts")
    for col in cols:
        try:
            table[col] = pd.to_numeric(table[col]).astype(np.float64)
        except (ValueError, TypeError) as exc:
            raise TrainingDataError(f"{source}: column {col!r} is not numeric") from exc
    return table, cols


def _in_time_order(table: pd.DataFrame, source: str, *, sort: bool) -> pd.DataFrame:
    """The table with each stream's rows in time order: as it is, or sorted when `sort`."""
    by_stream = table.groupby("stream_id", sort=False)["ts"]
    unsorted = by_stream.apply(lambda t: bool((t.diff().dropna() < 0).any()))
    if not unsorted.any():
        return table
    if not sort:
        first = unsorted[unsorted].index[0]
        raise TrainingDataError(
            f"{source}: timestamps of stream {first!r} are not sorted; pass --sort to sort them"
        )
    return table.sort_values(["stream_id", "ts"], kind="stable")


def _deduplicated(table: pd.DataFrame, source: str, dedupe: str | None) -> pd.DataFrame:
    """The table with one row per (stream, ts), keeping the `dedupe` one of each."""
    dupes = table.duplicated(["stream_id", "ts"], keep=False)
    if not dupes.any():
        return table
    if dedupe is None:
        row = table[dupes].iloc[0]
        raise TrainingDataError(
            f"{source}: {int(dupes.sum())} rows share a timestamp (first: stream {row['stream_id']!r} "
            f"ts {row['ts']}); pass --dedupe first or --dedupe last"
        )
    return table.drop_duplicates(["stream_id", "ts"], keep=dedupe)


def _filled(table: pd.DataFrame, source: str, cols: list[str], fill: str | None) -> pd.DataFrame:
    """The table with no missing feature values: each stream's gaps carried forward (and its
    leading ones back) when `fill` is ``ffill``."""
    nans = table[cols].isna()
    if not nans.to_numpy().any():
        return table
    if fill is None:
        col = nans.sum().idxmax()
        raise TrainingDataError(
            f"{source}: {int(nans.to_numpy().sum())} missing values (most in column {col!r}); "
            "pass --fill ffill to carry the last value forward"
        )
    grouped = table.groupby("stream_id", sort=False)[cols]
    table[cols] = grouped.ffill()
    table[cols] = table.groupby("stream_id", sort=False)[cols].bfill()
    if table[cols].isna().to_numpy().any():
        raise TrainingDataError(f"{source}: a stream has no value at all in some column")
    return table


def _median_period(table: pd.DataFrame, source: str) -> float:
    steps = table.groupby("stream_id", sort=False)["ts"].diff().dropna()
    if steps.empty or not float(steps.median()) > 0:
        raise TrainingDataError(
            f"{source}: need at least two readings per stream to infer the period"
        )
    return float(steps.median())


def _fingerprint(table: pd.DataFrame) -> str:
    """The table's identity: its columns and values. Text columns are hashed as Python
    objects, whatever pandas stores them as (pandas 3 reads them as its ``str`` dtype, which
    hashes differently), so one table has one fingerprint under any pandas version."""
    digest = hashlib.sha256()
    digest.update(",".join(map(str, table.columns)).encode())
    text = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    hashed = table.astype(dict.fromkeys(text, object)) if text else table
    digest.update(pd.util.hash_pandas_object(hashed, index=False).to_numpy().tobytes())
    return digest.hexdigest()
