from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service.simulate import simulate
from training.data import Splits, fit_scaler, load_dataset, parse_time
from training.errors import TrainingDataError


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
