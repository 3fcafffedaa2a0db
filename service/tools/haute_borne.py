"""The built-in ``la-haute-borne``: ENGIE's La Haute Borne wind farm, 2014-2015.

Four Senvion MM82 turbines (2,050 kW) in the Meuse, France; 10-minute averages of their
SCADA readings from 2014-01-01 00:00 to 2015-12-31 23:50 UTC, shipped inside the openoa
wheel (``pip install --no-deps openoa==3.2``) as member `MEMBER` of
``examples/data/la_haute_borne.zip``. One stream per turbine (``R80711``, ``R80721``,
``R80736``, ``R80790``); the features are `COLUMNS`.

The file's clock runs on UTC+01:00 all year, but its ``Date_time`` stamps carry the offsets
of Paris local time (``+02:00`` in summer), added after the fact. The repair, in order:

1. Each stamp's wall-clock part is read as UTC+01:00 and its written offset ignored, so the
   summer readings move one hour later than their offsets say. This removes the autumn
   artefact (2014-10-26, 2015-10-25): the stamps jump from 01:50+02:00 to 02:00+01:00, a
   70-minute hole in UTC over which the readings run on without a break.
2. The spring artefact (2014-03-30, 2015-03-29) cannot be undone: the wall-clock hour
   02:00-02:50 is missing and each of the six stamps 03:00-03:50 holds two different
   readings, one of which belongs to the missing hour; the file does not say which. The
   first in file order is kept, the other dropped (6 readings per turbine and spring), and
   02:00-02:50 UTC+01:00 is left a hole: one interval of 70 minutes.
3. Rows without any reading (all of `COLUMNS` empty: the turbine's logger was down) are
   dropped, leaving holes in time; the trainer's gap handling (``--gaps``) decides what a
   long one means.

Counts, and how the clock was established: docs/la-haute-borne.md.
"""

from __future__ import annotations

import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pandas as pd

from service.errors import DataSourceError

__all__ = ["COLUMNS", "INSTALL", "MEMBER", "NAME", "PERIOD", "load_haute_borne"]

NAME = "la-haute-borne"
INSTALL = "pip install --no-deps openoa==3.2"
MEMBER = "la-haute-borne-data-2014-2015.csv"
PERIOD = 600.0
"""Seconds between readings: 10-minute averages."""

COLUMNS = {
    "P_avg": "active power, kW (slightly negative while idle: the turbine's own consumption)",
    "Ot_avg": "outdoor temperature, °C",
    "Ws_avg": "wind speed at the nacelle, m/s",
    "Ba_avg": "blade pitch angle, ° (about -1 producing, up to 90 feathered)",
    "Wa_avg": "absolute wind direction, ° (0-360)",
}
"""The features, each the mean over its 10 minutes, in table order."""

_ARCHIVE = "examples/data/la_haute_borne.zip"
_CLOCK_OFFSET = 3600.0  # the file's clock: UTC+01:00, all year
_OFFSETS = ("+01:00", "+02:00")  # what the stamps say: Paris local time


def load_haute_borne() -> pd.DataFrame:
    """The long table (``stream_id``, ``ts`` in UTC epoch seconds, `COLUMNS`), repaired as
    the module says, in stream and time order.

    Raises `DataSourceError` in one line when openoa is not installed (naming `INSTALL`)
    or its archive is not the one expected.
    """
    raw = _read(_archive())
    table = pd.DataFrame({"stream_id": raw["Wind_turbine_name"].astype(str), "ts": _utc(raw)})
    for column in COLUMNS:
        table[column] = raw[column].astype(np.float64)
    # 2. one reading per stamp: the first in file order
    table = table.drop_duplicates(["stream_id", "ts"], keep="first")
    # 3. rows without any reading are no readings
    table = table[table[list(COLUMNS)].notna().any(axis=1)]
    return table.sort_values(["stream_id", "ts"]).reset_index(drop=True)


def _archive() -> Path:
    """Where the installed openoa wheel put the zip (found in its record of files)."""
    try:
        dist = distribution("openoa")
    except PackageNotFoundError as exc:
        raise DataSourceError(
            f"{NAME}: the data ships inside the openoa wheel, which is not installed; {INSTALL}"
        ) from exc
    for file in dist.files or []:
        if file.as_posix() == _ARCHIVE:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise DataSourceError(
        f"{NAME}: openoa {dist.version} has no {_ARCHIVE}; {INSTALL} (the version that ships it)"
    )


def _read(path: Path) -> pd.DataFrame:
    columns = ["Wind_turbine_name", "Date_time", *COLUMNS]
    try:
        with zipfile.ZipFile(path) as archive, archive.open(MEMBER) as member:
            # correctly rounded floats, as every pandas version reads them (the default parser
            # of pandas 3 reads some of this file's values one ulp away from that of pandas 2)
            return pd.read_csv(member, usecols=columns, float_precision="round_trip")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DataSourceError(
            f"{NAME}: cannot read {MEMBER} from {path} ({type(exc).__name__}: {exc})"
        ) from exc


def _utc(raw: pd.DataFrame) -> np.ndarray:
    """1. UTC epoch seconds of each ``Date_time``: its wall clock read as UTC+01:00."""
    stamps = raw["Date_time"].astype(str)
    offsets = stamps.str.slice(19)
    unknown = ~offsets.isin(_OFFSETS)
    if unknown.any():
        raise DataSourceError(
            f"{NAME}: stamp {stamps[unknown].iloc[0]!r} has an offset other than "
            f"{' or '.join(_OFFSETS)}; the repair assumes Paris local time"
        )
    wall = pd.to_datetime(stamps.str.slice(0, 19), format="%Y-%m-%dT%H:%M:%S")
    seconds = (wall - pd.Timestamp("1970-01-01")) / pd.Timedelta(seconds=1)
    return np.asarray(seconds, np.float64) - _CLOCK_OFFSET
