from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service.simulate import simulate
from training.data import (
    Splits,
    fit_scaler,
    load_dataset,
    near_constant_columns,
)
from training.errors import TrainingDataError
from training.timestamps import parse_time


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "stream_id": ["a", "a", "a", "b", "b", "b"],
            "ts": [0.0, 60.0, 120.0, 0.0, 60.0, 120.0],
            "temp": [1.0, 2.0, 3.0, 10.0, 20.0, 30.0],
            "load": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        }
    )


def _write(tmp_path: Path, table: pd.DataFrame, name: str = "t.csv") -> Path:
    path = tmp_path / name
    if name.endswith(".parquet"):
        table.to_parquet(path)
    else:
        table.to_csv(path, index=False)
    return path


def test_reads_csv_and_parquet_alike(tmp_path: Path) -> None:
    csv = load_dataset(str(_write(tmp_path, _table())))
    parquet = load_dataset(str(_write(tmp_path, _table(), "t.parquet")))
    assert csv.features == ["temp", "load"] == parquet.features
    assert csv.targets == csv.features
    assert csv.period == 60.0
    pd.testing.assert_frame_equal(csv.table, parquet.table)
    assert csv.fingerprint == parquet.fingerprint
    [a, b] = csv.series()
    assert a.stream_id == "a"
    np.testing.assert_array_equal(b.values[:, 0], [10.0, 20.0, 30.0])


def test_fingerprint_changes_with_any_value(tmp_path: Path) -> None:
    changed = _table()
    changed.loc[4, "load"] = 0.55
    one = load_dataset(str(_write(tmp_path, _table(), "a.csv")))
    two = load_dataset(str(_write(tmp_path, changed, "b.csv")))
    assert one.fingerprint != two.fingerprint
    assert len(one.fingerprint) == 64


def test_iso_timestamps_become_epoch_seconds(tmp_path: Path) -> None:
    table = _table()
    table["ts"] = ["1970-01-01T00:00:00Z", "1970-01-01T00:01:00Z", "1970-01-01T00:02:00Z"] * 2
    data = load_dataset(str(_write(tmp_path, table)))
    np.testing.assert_array_equal(data.series()[0].ts, [0.0, 60.0, 120.0])


def test_features_and_targets_are_selected(tmp_path: Path) -> None:
    data = load_dataset(
        str(_write(tmp_path, _table())), features=["load", "temp"], targets=["temp"]
    )
    assert data.features == ["load", "temp"]
    assert data.target_index == [1]
    with pytest.raises(TrainingDataError, match="targets"):
        load_dataset(str(_write(tmp_path, _table())), features=["load"], targets=["temp"])


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="no such file"):
        load_dataset(str(tmp_path / "nope.csv"))


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_text("not parquet")
    with pytest.raises(TrainingDataError, match="cannot read"):
        load_dataset(str(path))


def test_missing_columns(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match=r"missing column.*stream_id"):
        load_dataset(str(_write(tmp_path, _table().drop(columns="stream_id"))))
    with pytest.raises(TrainingDataError, match=r"missing column.*humidity"):
        load_dataset(str(_write(tmp_path, _table())), features=["humidity"])


def test_unsorted_timestamps_fail_unless_sorted(tmp_path: Path) -> None:
    table = _table().iloc[[0, 2, 1, 3, 4, 5]]
    path = _write(tmp_path, table)
    with pytest.raises(TrainingDataError, match=r"not sorted.*--sort"):
        load_dataset(str(path))
    data = load_dataset(str(path), sort=True)
    np.testing.assert_array_equal(data.series()[0].values[:, 0], [1.0, 2.0, 3.0])


def test_duplicate_timestamps_fail_unless_deduped(tmp_path: Path) -> None:
    table = pd.concat([_table(), _table().iloc[[1]].assign(temp=99.0)]).sort_values(
        ["stream_id", "ts"], kind="stable"
    )
    path = _write(tmp_path, table)
    with pytest.raises(TrainingDataError, match=r"share a timestamp.*--dedupe"):
        load_dataset(str(path))
    last = load_dataset(str(path), dedupe="last").series()[0]
    first = load_dataset(str(path), dedupe="first").series()[0]
    assert last.values[1, 0] == 99.0
    assert first.values[1, 0] == 2.0


def test_nans_fail_unless_filled(tmp_path: Path) -> None:
    table = _table()
    table.loc[1, "temp"] = np.nan
    table.loc[3, "load"] = np.nan  # the first value of stream b: filled backward
    path = _write(tmp_path, table)
    with pytest.raises(TrainingDataError, match=r"missing values.*--fill ffill"):
        load_dataset(str(path))
    a, b = load_dataset(str(path), fill="ffill").series()
    np.testing.assert_array_equal(a.values[:, 0], [1.0, 1.0, 3.0])
    assert b.values[0, 1] == pytest.approx(0.5)


def test_non_numeric_feature(tmp_path: Path) -> None:
    table = _table()
    table["temp"] = table["temp"].astype(object)
    table.loc[2, "temp"] = "hot"
    with pytest.raises(TrainingDataError, match="'temp' is not numeric"):
        load_dataset(str(_write(tmp_path, table)))


def test_bad_repair_options() -> None:
    with pytest.raises(TrainingDataError, match="dedupe"):
        load_dataset("synthetic", n_streams=1, n_steps=10, dedupe="middle")
    with pytest.raises(TrainingDataError, match="fill"):
        load_dataset("synthetic", n_streams=1, n_steps=10, fill="zero")


def test_sunspots_builtin() -> None:
    data = load_dataset("sunspots")
    [series] = data.series()
    assert data.features == ["sunspots"] == data.targets
    years = pd.to_datetime(series.ts, unit="s").year
    assert years[0] == 1700 and years[-1] == 2008
    assert len(series.ts) == 309
    assert series.values[years.get_loc(1700), 0] == 5.0
    assert data.period == pytest.approx(365.2425 * 86400)


def test_synthetic_builtin_skips_gaps() -> None:
    data = load_dataset("synthetic", n_streams=20, n_steps=600, seed=1)
    sim = simulate(20, 600, seed=1)
    assert sorted(data.table["stream_id"].unique()) == sim.stream_ids
    assert data.period == 300.0
    assert not sim.present.all()
    assert len(data.table) == int(sim.present.sum())  # gaps leave rows out
    first = data.series()[0]
    np.testing.assert_allclose(first.values, sim.values[0][sim.present[0]], rtol=1e-6)
    assert data.features == ["temp", "pressure", "vibration"]


def test_parse_time() -> None:
    assert parse_time("1921-01-01") == pd.Timestamp("1921-01-01", tz="UTC").timestamp()
    assert parse_time("12.5") == 12.5
    assert parse_time(3) == 3.0
    with pytest.raises(TrainingDataError, match="cannot read"):
        parse_time("next tuesday")


def test_split_parts_are_disjoint_and_chronological() -> None:
    splits = Splits(10.0, 20.0, 30.0)
    ts = np.arange(35.0)
    parts = {p: splits.part(ts, p) for p in ("train", "val", "test")}
    assert ts[parts["train"]].max() < 10 <= ts[parts["val"]].min()
    assert ts[parts["val"]].max() < 20 <= ts[parts["test"]].min()
    assert ts[parts["test"]].max() < 30
    assert not (parts["train"] & parts["val"]).any()
    with pytest.raises(TrainingDataError):
        Splits(20.0, 10.0)


def test_scaler_sees_the_train_part_only(tmp_path: Path) -> None:
    table = _table()
    data = load_dataset(str(_write(tmp_path, table)))
    splits = Splits(val_start=100.0, test_start=110.0)
    scaler = fit_scaler(data, splits)
    train = table[table["ts"] < 100.0]
    np.testing.assert_allclose(scaler.features.mean, train[["temp", "load"]].mean().to_numpy())
    np.testing.assert_allclose(scaler.features.std, train[["temp", "load"]].std(ddof=0).to_numpy())
    # Wild values after the boundary do not move the scaler.
    table.loc[table["ts"] >= 100.0, ["temp", "load"]] = 1e6
    again = fit_scaler(load_dataset(str(_write(tmp_path, table, "wild.csv"))), splits)
    assert again == scaler


# -- timestamp units ------------------------------------------------------------------------------

_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _five_minute_readings(unit: str) -> pd.DataFrame:
    """Two boiler streams every 5 minutes from 2023-11-14T22:13:20Z, stamped in `unit`."""
    seconds = 1_700_000_000 + 300 * np.arange(48, dtype=np.int64)
    temp = 60.0 + 4.0 * np.sin(np.arange(48) / 6.0)
    return pd.DataFrame(
        {
            "stream_id": ["boiler-1"] * 48 + ["boiler-2"] * 48,
            "ts": np.concatenate([seconds, seconds]) * _PER_SECOND[unit],
            "temp": np.concatenate([temp, temp + 1.5]),
        }
    )


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_each_ts_unit_gives_the_same_seconds(tmp_path: Path, unit: str) -> None:
    seconds = load_dataset(str(_write(tmp_path, _five_minute_readings("s"), "s.csv")))
    path = str(_write(tmp_path, _five_minute_readings(unit), f"{unit}.parquet"))
    for given in (unit, "auto"):
        data = load_dataset(path, ts_unit=given)
        pd.testing.assert_frame_equal(data.table, seconds.table)
        assert data.period == 300.0


@pytest.mark.parametrize(
    ("unit", "name"), [("ms", "milliseconds"), ("us", "microseconds"), ("ns", "nanoseconds")]
)
def test_ts_in_a_finer_unit_is_refused_naming_it_and_the_flag(
    tmp_path: Path, unit: str, name: str
) -> None:
    path = str(_write(tmp_path, _five_minute_readings(unit)))
    with pytest.raises(TrainingDataError) as exc:
        load_dataset(path)
    message = str(exc.value)
    assert "\n" not in message
    assert f"looks like epoch {name}, not seconds" in message
    assert f"--ts-unit {unit}" in message
    assert f"{1_700_014_100 * _PER_SECOND[unit]}" in message  # the latest reading, as written
    assert "2023-11-15T02:08:20Z" in message
    # Told the wrong finer unit, it names the right one.
    if unit != "ms":
        with pytest.raises(TrainingDataError, match=f"not milliseconds.*--ts-unit {unit}"):
            load_dataset(path, ts_unit="ms")


def test_ts_that_is_no_epoch_time_in_any_unit_is_refused(tmp_path: Path) -> None:
    table = _five_minute_readings("ns")
    table["ts"] = table["ts"].astype(np.float64) * 1e3  # picoseconds: past 2500 in every unit
    path = str(_write(tmp_path, table))
    for unit in ("s", "auto"):
        with pytest.raises(TrainingDataError, match="not an epoch time in s, ms, us or ns"):
            load_dataset(path, ts_unit=unit)


def test_step_indices_and_years_before_1970_stay_seconds(tmp_path: Path) -> None:
    steps = pd.DataFrame({"stream_id": "a", "ts": np.arange(40), "v": np.sin(np.arange(40.0))})
    data = load_dataset(str(_write(tmp_path, steps, "steps.csv")), ts_unit="auto")
    assert data.period == 1.0 and data.table["ts"].iloc[-1] == 39.0
    sunspots = load_dataset("sunspots", ts_unit="auto")
    assert sunspots.table["ts"].iloc[0] == pd.Timestamp("1700-01-01", tz="UTC").timestamp()
    with pytest.raises(TrainingDataError, match="built-in is stamped in seconds"):
        load_dataset("sunspots", ts_unit="ms")


def test_split_boundaries_in_milliseconds_are_refused() -> None:
    with pytest.raises(TrainingDataError, match="looks like epoch milliseconds"):
        parse_time("1700000000000")
    with pytest.raises(TrainingDataError, match="not epoch seconds"):
        parse_time("nan")


# -- constant columns -----------------------------------------------------------------------------


def test_near_constant_columns_are_found_relative_to_their_magnitude(tmp_path: Path) -> None:
    n = 40
    table = pd.DataFrame(
        {
            "stream_id": "press-7",
            "ts": 1_700_000_000.0 + 60 * np.arange(n),
            "setpoint": 14.62,
            # a counter stuck at 2.5e6 with float32 jitter: std 0.05, a 2e-8 fraction
            "counter": 2.5e6 + 0.05 * (-1.0) ** np.arange(n),
            # a strain gauge in small units: std 1e-8, but a 10% spread around 1e-7
            "strain": 1e-7 + 1e-8 * np.sin(np.arange(n)),
        }
    )
    data = load_dataset(str(_write(tmp_path, table)))
    splits = Splits(val_start=1_700_000_000.0 + 60 * 30, test_start=1_700_000_000.0 + 60 * 35)
    assert near_constant_columns(data, splits) == {
        "setpoint": "14.62 in every row",
        "counter": "2.5e+06 +- 0.05",
    }
    scaler = fit_scaler(data, splits)
    # Near-constant columns are scaled by 1, not by their rounding noise; the rest as usual.
    assert scaler.features.std[:2] == [1.0, 1.0]
    assert scaler.features.std[2] == pytest.approx(table["strain"][:30].std(ddof=0))
    assert np.isfinite(scaler.features.transform(table[data.features].to_numpy())).all()
