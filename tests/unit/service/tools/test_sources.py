from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from service.errors import DataSourceError
from service.simulate import simulate
from service.tools.sources import load_source, parse_time, read_table, synthetic

pd = pytest.importorskip("pandas")


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_is_read_in_time_order_keeping_each_streams_order(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "r.csv",
        "stream_id,ts,temp,load\n"
        "a,100,1.0,10\n"
        "a,200,2.0,20\n"
        "b,50,5.0,\n"  # load missing
        "b,150,6.0,60\n",
    )
    table = read_table(path)
    assert table.features == ("temp", "load")
    assert list(table.readings()) == [
        ("b", 50.0, {"temp": 5.0}),
        ("a", 100.0, {"temp": 1.0, "load": 10.0}),
        ("b", 150.0, {"temp": 6.0, "load": 60.0}),
        ("a", 200.0, {"temp": 2.0, "load": 20.0}),
    ]
    assert table.n_streams == 2 and len(table) == 4


def test_iso_timestamps_become_epoch_seconds(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "r.csv",
        "stream_id,ts,temp\npump-1,2024-01-01T00:00:00Z,1\npump-1,2024-01-01T00:05:00+00:00,2\n",
    )
    table = read_table(path)
    start = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    assert table.ts.tolist() == [start, start + 300]


def test_parquet_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame(
        {"stream_id": ["x", "y", "x"], "ts": [1.0, 1.0, 2.0], "v": [0.5, 1.5, 2.5]}
    )
    frame.to_parquet(tmp_path / "r.parquet")
    table = read_table(tmp_path / "r.parquet")
    assert list(table.readings()) == [
        ("x", 1.0, {"v": 0.5}),
        ("y", 1.0, {"v": 1.5}),
        ("x", 2.0, {"v": 2.5}),
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "no such file"),
        ("cols.csv", "id,ts,temp\na,1,2\n", "missing column(s) stream_id"),
        ("nofeat.csv", "stream_id,ts\na,1\n", "no feature columns"),
        ("text.csv", "stream_id,ts,temp\na,1,hot\n", "column 'temp' is not numeric"),
        ("ts.csv", "stream_id,ts,temp\na,yesterday,1\n", "column 'ts' is neither epoch"),
        ("nots.csv", "stream_id,ts,temp\na,,1\n", "row 1 has no timestamp"),
        ("inf.csv", "stream_id,ts,temp\na,1,inf\n", "infinite"),
        ("empty.csv", "", "cannot read the table"),
        ("junk.parquet", "this is not parquet", "cannot read the table"),
    ],
)
def test_bad_file_is_one_clear_error_line(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataSourceError) as info:
        read_table(path)
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert str(path) in text


def test_limit_keeps_first_streams_and_steps() -> None:
    table = synthetic(5, 20, seed=3)
    small = table.limit(streams=2, steps=4)
    ids = small.stream_ids
    assert sorted(set(ids)) == ["sensor-00000", "sensor-00001"]
    for sid in set(ids):
        mine = table.ts[np.asarray(table.stream_ids) == sid][:4]
        assert small.ts[np.asarray(ids) == sid].tolist() == mine.tolist()


def test_synthetic_is_step_major_and_skips_gaps() -> None:
    sim = simulate(30, 400, seed=1)
    table = synthetic(30, 400, seed=1)
    assert len(table) == int(sim.present.sum())
    assert sim.present.sum() < sim.present.size  # the simulator has gaps at this size
    assert np.all(np.diff(table.ts) >= 0)
    first = next(table.readings())
    assert first[0] == sim.stream_ids[0] and first[1] == float(sim.ts[0])
    assert first[2] == dict(zip(sim.features, sim.values[0, 0].tolist(), strict=True))
    expected = [(s, t, v) for s, t, v in sim.readings()]
    assert list(table.readings()) == expected


def test_load_source_shifts_to_start_ts(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "r.csv", "stream_id,ts,v\na,100,1\na,160,2\n")
    table = load_source(str(path), start_ts=1000.0)
    assert table.ts.tolist() == [1000.0, 1060.0]
    synth = load_source("synthetic", streams=3, steps=5, start_ts=5000.0, period=60.0)
    assert synth.ts.min() == 5000.0 and synth.n_streams == 3
    assert set(np.diff(np.unique(synth.ts)).tolist()) == {60.0}


def test_sunspots_builtin() -> None:
    pytest.importorskip("statsmodels")
    table = load_source("sunspots")
    assert table.features == ("sunspots",)
    assert table.n_streams == 1 and len(table) == 309
    assert table.ts[0] == datetime(1700, 1, 1, tzinfo=UTC).timestamp()
    assert next(table.readings())[2] == {"sunspots": 5.0}


def test_parse_time() -> None:
    assert parse_time("1700000000.5") == 1700000000.5
    assert parse_time("2024-01-01T00:00:00") == datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    assert parse_time("2024-01-01T01:00:00+01:00") == datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    assert math.isclose(parse_time("now"), datetime.now(UTC).timestamp(), abs_tol=5)
    with pytest.raises(DataSourceError, match="cannot read 'soon' as a time"):
        parse_time("soon")
    with pytest.raises(DataSourceError, match="not a finite number"):
        parse_time("nan")


def test_la_haute_borne_builtin_replays_the_table_training_reads() -> None:
    from training.data import load_dataset

    table = load_source("la-haute-borne", streams=4, steps=500)
    assert table.features == ("P_avg", "Ot_avg", "Ws_avg", "Ba_avg", "Wa_avg")
    assert table.n_streams == 4 and len(table) == 2000
    assert (np.diff(table.ts) >= 0).all()  # in time order, turbines interleaved
    trained = load_dataset("la-haute-borne", gaps="refuse", max_gap_periods=1e9).table
    for sid in sorted(set(table.stream_ids)):
        mine = np.asarray([s == sid for s in table.stream_ids])
        theirs = trained[trained["stream_id"] == sid].head(500)
        np.testing.assert_array_equal(table.ts[mine], theirs["ts"].to_numpy())
        np.testing.assert_allclose(
            table.values[mine], theirs[list(table.features)].to_numpy(), equal_nan=True
        )
