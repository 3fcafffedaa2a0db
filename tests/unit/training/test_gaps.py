from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service.cli import main
from service.registry import Registry
from training.config import load_config
from training.data import load_dataset
from training.errors import TrainingConfigError, TrainingDataError
from training.train import make_batches, train

from .conftest import tiny_config

START = 1_700_000_000.0  # 2023-11-14T22:13:20Z
REGISTRY = Path(__file__).resolve().parents[3] / "models"
TINY = [
    "--hidden", "6", "--layers", "1", "--horizon", "2", "--epochs", "1", "--chunk", "20",
    "--burn-in", "3", "--ar-order", "2", "--no-progress",
]  # fmt: skip


def _pumps(path: Path, holes: dict[int, float] | None = None) -> Path:
    """Two pumps read every minute, 120 readings each. Pump ``p-1`` has holes (default: one
    hour before its reading 60), given as {reading: seconds since the one before}; ``p-2``
    has none."""
    n = 120
    rng = np.random.default_rng(3)
    step = np.r_[0.0, np.full(n - 1, 60.0)]
    holey = step.copy()
    for at, seconds in ({60: 3600.0} if holes is None else holes).items():
        holey[at] = seconds
    parts = [
        pd.DataFrame(
            {
                "stream_id": sid,
                "ts": START + np.cumsum(holey if sid == "p-1" else step),
                "flow": 5.0 + np.sin(np.arange(n) / 7.0 + k) + rng.normal(0, 0.1, n),
                "pressure": 2.0 + 0.5 * np.cos(np.arange(n) / 11.0) + rng.normal(0, 0.05, n),
            }
        )
        for k, sid in enumerate(("p-1", "p-2"))
    ]
    pd.concat(parts).to_csv(path, index=False)
    return path


def test_a_hole_splits_its_stream_into_two_segments(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _pumps(tmp_path / "pumps.csv")
    raw = pd.read_csv(path)
    with caplog.at_level(logging.INFO, logger="training.gaps"):
        data = load_dataset(str(path))
    assert data.period == 60.0
    first, second, other = data.series()
    assert [first.stream_id, second.stream_id, other.stream_id] == ["p-1#0", "p-1#1", "p-2"]
    assert (len(first.ts), len(second.ts), len(other.ts)) == (60, 60, 120)
    assert second.ts[0] - first.ts[-1] == 3600.0
    pump = raw[raw["stream_id"] == "p-1"][["flow", "pressure"]].to_numpy(np.float32)
    np.testing.assert_array_equal(np.concatenate([first.values, second.values]), pump)
    assert len(data.table) == len(raw)
    assert "cut 1 stream(s) at 1 gap(s) longer than 10 periods (600 s) into 2 segments" in (
        caplog.text
    )


def test_training_sequences_start_at_each_segment_and_never_cross_the_hole(
    tmp_path: Path,
) -> None:
    path = _pumps(tmp_path / "pumps.csv")
    result = train(
        tiny_config(data=str(path), horizon=2, burn_in=3, chunk=16, batch_size=2),
        progress=False,
    )
    streams = {s.stream_id: s for s in result.streams}
    before, after = streams["p-1#0"], streams["p-1#1"]
    # No target reaches across the hole: the last readings before it have none.
    assert np.isinf(before.target_ts[-1]).all() and np.isinf(before.target_ts[-2, 1])
    assert before.target_ts[np.isfinite(before.target_ts)].max() == before.ts[-1]
    # After the hole the state warms up again, as from a stream's first reading.
    assert not after.loss_mask(result.splits, "train", 3)[:3].any()
    # Each batch slot carries one segment from its first step, never readings from both sides.
    masks = [s.loss_mask(result.splits, "train", 3) for s in result.streams]
    segments = [s.x for s in result.streams]
    for batch in make_batches(result.streams, masks, 2, np.random.default_rng(0)):
        for slot in batch.x.numpy():
            used = slot[np.abs(slot).sum(axis=1) > 0]
            assert any(
                len(used) <= len(x) and np.array_equal(used, x[: len(used)]) for x in segments
            )


def test_segments_in_the_test_part_and_of_one_reading_train_score_and_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # p-1: readings 0-99, an hour's hole, 100-118 (all in the test part), an hour's hole, 119.
    path = _pumps(tmp_path / "pumps.csv", {100: 3600.0, 119: 3600.0})
    bounds = ["--val-start", str(START + 60 * 60), "--test-start", str(START + 60 * 90)]
    argv = ["train", "--data", str(path), *bounds, *TINY, "--registry", str(tmp_path)]
    assert main(argv) == 0
    model_dir = tmp_path / "model" / "1"
    card = json.loads((model_dir / "card.json").read_text())
    assert card["provenance"]["config"]["gaps"] == "split"
    assert card["description"].endswith("(4 stream(s)), horizon 2")
    report = json.loads((model_dir / "report.json").read_text())
    # Test targets (ts >= 90 min) at horizon steps 1 + 2: p-1#0's up to its last reading
    # (99 min), every one of p-1#1 (19 readings), none of p-1#2 (one reading), p-2's.
    assert report["periods"]["test"]["model"]["count"] == (10 + 10) + (18 + 17) + (30 + 30)
    capsys.readouterr()
    assert main(["evaluate", str(model_dir)]) == 0
    assert "sensorcast: error" not in capsys.readouterr().err


def test_refuse_names_the_stream_the_two_timestamps_and_the_gap(tmp_path: Path) -> None:
    path = _pumps(tmp_path / "pumps.csv")
    with pytest.raises(TrainingDataError) as exc:
        load_dataset(str(path), gaps="refuse")
    message = str(exc.value)
    assert "\n" not in message
    assert message == (
        f"{path}: stream 'p-1' has a gap of 3600 s (60 periods of 60 s) between ts "
        "1700003540 (2023-11-14T23:12:20Z) and 1700007140 (2023-11-15T00:12:20Z), more than "
        "max_gap_periods=10; pass --gaps split to cut streams at gaps, or a larger "
        "--max-gap-periods"
    )


def test_refuse_through_the_cli_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _pumps(tmp_path / "pumps.csv")
    argv = ["train", "--data", str(path), "--gaps", "refuse", *TINY, "--registry", str(tmp_path)]
    assert main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("sensorcast: error: ") and "stream 'p-1' has a gap of 3600 s" in line
    # A larger limit makes the same hole no gap.
    assert main([*argv, "--max-gap-periods", "60"]) == 0


def test_a_hole_of_exactly_the_limit_is_no_gap(tmp_path: Path) -> None:
    # As in the service: a gap is *longer* than max_gap_periods periods.
    path = _pumps(tmp_path / "pumps.csv", {60: 600.0})
    assert load_dataset(str(path), gaps="refuse").table["stream_id"].nunique() == 2
    assert load_dataset(str(path), max_gap_periods=9.99).table["stream_id"].nunique() == 3


def test_data_without_holes_is_unchanged(tmp_path: Path) -> None:
    path = _pumps(tmp_path / "pumps.csv", {})
    split = load_dataset(str(path))
    refused = load_dataset(str(path), gaps="refuse")
    assert split.fingerprint == refused.fingerprint
    pd.testing.assert_frame_equal(split.table, refused.table)
    assert len(split.table) == 240
    assert sorted(split.table["stream_id"].unique()) == ["p-1", "p-2"]


def test_short_holes_change_nothing_the_shipped_models_data_keeps_its_fingerprint() -> None:
    # The simulator leaves holes of up to 7 periods: below the limit, so no stream is cut.
    registry = Registry(REGISTRY)
    checked = 0
    for name in registry.names():
        card = registry.load(name).card
        config = load_config(card.provenance.config)
        data = load_dataset(
            config.data,
            features=config.features,
            targets=config.targets,
            n_streams=config.n_streams,
            n_steps=config.n_steps,
            seed=config.data_seed,
            gaps=config.gaps,
            max_gap_periods=config.max_gap_periods,
        )
        assert data.fingerprint == card.provenance.data_fingerprint, name
        checked += 1
    assert checked


def test_readings_closer_than_the_period_are_left_as_they_are(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    step = rng.choice([15.0, 30.0, 60.0, 90.0], size=150)  # irregular, median 60 or less
    table = pd.DataFrame(
        {
            "stream_id": "p-3",
            "ts": START + np.cumsum(step),
            "flow": 5.0 + np.sin(np.cumsum(step) / 400.0) + rng.normal(0, 0.1, 150),
        }
    )
    path = tmp_path / "irregular.csv"
    table.to_csv(path, index=False)
    data = load_dataset(str(path), gaps="refuse")
    assert data.table["stream_id"].unique().tolist() == ["p-3"]
    assert len(data.table) == 150
    result = train(tiny_config(data=str(path), horizon=2, batch_size=1), progress=False)
    assert np.isfinite(result.history[-1]["train_loss"])


def test_a_segment_name_that_is_taken_is_refused(tmp_path: Path) -> None:
    path = _pumps(tmp_path / "pumps.csv")
    table = pd.read_csv(path)
    table.loc[table["stream_id"] == "p-2", "stream_id"] = "p-1#1"
    table.to_csv(path, index=False)
    with pytest.raises(TrainingDataError, match=r"segment 'p-1#1', already a stream's id"):
        load_dataset(str(path))


def test_gap_options_are_checked() -> None:
    with pytest.raises(TrainingConfigError, match="gaps"):
        load_config({"gaps": "fill"})
    with pytest.raises(TrainingConfigError, match="max_gap_periods"):
        load_config({"max_gap_periods": 0})
    with pytest.raises(TrainingDataError, match="gaps must be one of split, refuse"):
        load_dataset("synthetic", n_streams=1, n_steps=10, gaps="fill")
