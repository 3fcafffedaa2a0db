"""Derived inputs: computed from the reading itself, by the same code in training and serving.

Oracles: the calendar from `datetime` and the angles from `math`, computed independently of
`service.core.inputs`; the inputs training builds from a table (`Dataset.series`), against
the inputs the engine feeds the model for the same readings; the trained model's offline
forecasts, against what the engine serves (cold and after a re-warm for another model).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service.core.engine import EngineConfig, StreamEngine
from service.core.inputs import InputEncoder
from service.core.model import OnnxStepModel
from service.modelcard import DerivedInputs, ModelCard
from service.registry import Registry
from service.testing import ListSink, drive, interleave, random_batches, readings_for
from training.data import load_dataset
from training.errors import TrainingDataError
from training.pipeline import train_and_export
from training.predict import offline_forecast

from .conftest import tiny_config

PERIOD = 600.0
START = datetime(2015, 3, 27, 18, 0, tzinfo=UTC).timestamp()  # a weekend and a clock change
FEATURES = ["temp", "power", "wind_dir"]
TARGETS = ["temp", "power"]


def test_calendar_phases_are_the_time_of_day_week_and_year_in_utc() -> None:
    rng = np.random.default_rng(3)
    ts = rng.uniform(0, datetime(2100, 1, 1, tzinfo=UTC).timestamp(), 2000)
    encoder = InputEncoder(["v"], DerivedInputs(calendar=["day", "week", "year"]))
    got = encoder.encode(np.zeros((len(ts), 1), np.float32), ts).astype(np.float64)
    for row, t in zip(got, ts.tolist(), strict=True):
        when = datetime.fromtimestamp(t, UTC)
        seconds = when.hour * 3600 + when.minute * 60 + when.second + when.microsecond / 1e6
        day = seconds / 86400
        week = (when.weekday() + day) / 7  # Monday 00:00 is 0
        for phase, (s, c) in ((day, row[1:3]), (week, row[3:5])):
            assert s == pytest.approx(math.sin(2 * math.pi * phase), abs=1e-6)
            assert c == pytest.approx(math.cos(2 * math.pi * phase), abs=1e-6)
        # the phase of a mean Gregorian year stays within a day of the calendar's date
        year_days = 366 if when.year % 4 == 0 and when.year % 100 != 0 else 365
        calendar = (when.timetuple().tm_yday - 1 + day) / year_days
        angle = math.atan2(row[5], row[6]) / (2 * math.pi) % 1.0
        off = min(abs(angle - calendar), 1 - abs(angle - calendar))
        assert off < 1.5 / 365, (when, angle, calendar)
    assert row[0] == 0.0  # the feature itself is copied


def test_an_angle_becomes_its_sine_and_cosine_in_its_place() -> None:
    encoder = InputEncoder(["speed", "dir", "temp"], DerivedInputs(angles=["dir"]))
    assert encoder.names == ["speed", "dir_sin", "dir_cos", "temp"]
    values = np.array([[3.0, 350.0, 12.5], [4.0, 10.0, 13.0], [5.0, -90.0, 1.0]], np.float32)
    got = encoder.encode(values, None)
    want = [[3.0, math.sin(math.radians(d)), math.cos(math.radians(d)), t] for _, d, t in values]
    want = [[v, s, c, t] for (v, *_), (_, s, c, t) in zip(values, want, strict=True)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # 350 and 10 degrees are 20 degrees apart, not 340
    assert np.linalg.norm(got[0, 1:3] - got[1, 1:3]) == pytest.approx(
        2 * math.sin(math.radians(10))
    )


def test_calendar_inputs_need_the_timestamps() -> None:
    encoder = InputEncoder(["v"], DerivedInputs(calendar=["day"]))
    with pytest.raises(ValueError, match="timestamps"):
        encoder.encode(np.zeros((2, 1), np.float32), None)


def test_a_card_refuses_an_angle_that_is_a_target_or_not_a_feature() -> None:
    card = _card_dict()
    for derived, match in (
        ({"angles": ["temp"]}, "are angles"),
        ({"angles": ["humidity"]}, "not features"),
        ({"calendar": ["day", "day"]}, "repeat"),
    ):
        with pytest.raises(ValueError, match=match):
            ModelCard.model_validate({**card, "derived": derived})


def test_training_refuses_an_angle_target_with_one_line(tmp_path: Path) -> None:
    path = _write_table(tmp_path, streams=1, steps=50)
    with pytest.raises(TrainingDataError, match="cannot be --angles"):
        load_dataset(
            str(path),
            features=FEATURES,
            targets=["wind_dir"],
            derived=DerivedInputs(angles=["wind_dir"]),
        )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny models with derived inputs (another seed: a retrained one), and their data."""
    root = tmp_path_factory.mktemp("derived")
    data = _write_table(root, streams=4, steps=400)
    for seed in (0, 1):
        config = tiny_config(
            name="derived",
            version=str(seed + 1),
            seed=seed,
            data=str(data),
            features=FEATURES,
            targets=TARGETS,
            angles=["wind_dir"],
            calendar=["day", "week", "year"],
            horizon=3,
        )
        train_and_export(config, root / "models", progress=False)
    return root / "models", data


def test_the_engine_feeds_the_model_the_inputs_training_built(trained: tuple[Path, Path]) -> None:
    models, data = trained
    loaded = Registry(models).load("derived", "1")  # its golden vectors, checked with their ts
    card = loaded.card
    assert card.inputs == [
        "temp", "power", "wind_dir_sin", "wind_dir_cos",
        "day_sin", "day_cos", "week_sin", "week_cos", "year_sin", "year_cos",
    ]  # fmt: skip
    dataset = load_dataset(str(data), features=FEATURES, targets=TARGETS, derived=card.derived)
    series = {s.stream_id: s for s in dataset.series()}
    seen: dict[float, np.ndarray] = {}
    model = OnnxStepModel.from_loaded(loaded)
    step = model.step

    def recording(x: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        # one stream at a time: its readings in order, on the batch or the time axis
        seen.update({len(seen) + i: row.copy() for i, row in enumerate(x.reshape(-1, x.shape[-1]))})
        return step(x, states)

    model.step = recording  # type: ignore[method-assign]
    engine = StreamEngine(model, EngineConfig())
    for sid, s in series.items():
        drive(engine, [readings_for(sid, s.values, start=float(s.ts[0]), period=PERIOD)], now=None)
    fed = np.stack([seen[i] for i in range(len(seen))])
    built = np.concatenate([card.scaler.features.transform(s.inputs) for s in series.values()])
    np.testing.assert_allclose(fed, built, atol=1e-6)


def test_served_forecasts_equal_the_offline_model_cold_and_after_a_rewarm(
    trained: tuple[Path, Path],
) -> None:
    models, data = trained
    registry = Registry(models)
    first, second = registry.load("derived", "1"), registry.load("derived", "2")
    dataset = load_dataset(
        str(data), features=FEATURES, targets=TARGETS, derived=first.card.derived
    )
    series = dataset.series()
    engine = StreamEngine(OnnxStepModel.from_loaded(first), EngineConfig())
    half = 200
    rng = np.random.default_rng(0)
    streams = [
        readings_for(s.stream_id, s.values[:half], start=float(s.ts[0]), period=PERIOD)
        for s in series
    ]
    sink = drive(engine, random_batches(interleave(streams, rng), rng, 64), now=None)
    for s in series:
        want = offline_forecast(first.ref.directory, s.values[:half], s.ts[:half])
        got = np.stack([f.values for f in sink.forecasts if f.stream_id == s.stream_id])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.max(np.abs(want)))
    # another model: each stream is re-warmed over its last K kept readings (and their ts)
    engine.replace_model(OnnxStepModel.from_loaded(second))
    k = second.card.warmup_steps
    after = ListSink()
    for s in series:
        reading = readings_for(
            s.stream_id, s.values[half : half + 1], start=float(s.ts[half]), first_offset=half
        )
        drive(engine, [reading], now=None, sink=after)
        rows = slice(half - k, half + 1)
        want = offline_forecast(second.ref.directory, s.values[rows], s.ts[rows])[-1]
        [got] = [f.values for f in after.forecasts if f.stream_id == s.stream_id]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.max(np.abs(want)))


# -- helpers ---------------------------------------------------------------------------------


def _write_table(root: Path, *, streams: int, steps: int) -> Path:
    """Sensors with a daily temperature cycle, a wind direction wandering across 0/360 and
    a power that follows the wind's direction, every 10 minutes."""
    rng = np.random.default_rng(11)
    frames = []
    for k in range(streams):
        ts = START + PERIOD * np.arange(steps)
        hours = (ts % 86400) / 3600
        temp = 8 + 6 * np.sin(2 * np.pi * (hours - 9) / 24) + rng.normal(0, 0.3, steps)
        wind_dir = (200 + k * 40 + np.cumsum(rng.normal(0, 8, steps))) % 360
        power = 500 + 300 * np.cos(np.radians(wind_dir - 220)) + rng.normal(0, 30, steps)
        frames.append(
            pd.DataFrame(
                {"stream_id": f"t{k}", "ts": ts, "temp": temp, "power": power, "wind_dir": wind_dir}
            )
        )
    path = root / "sensors.csv"
    pd.concat(frames).to_csv(path, index=False)
    return path


def _card_dict() -> dict[str, object]:
    from service.testing import make_card

    return make_card(features=("temp", "load"), targets=("temp",)).model_dump()
