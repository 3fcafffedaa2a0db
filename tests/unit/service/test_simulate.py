from __future__ import annotations

import numpy as np
import pytest

from service.simulate import DEFAULT_PERIOD, SENSOR_FEATURES, simulate


def test_shapes_types_and_timestamps() -> None:
    sim = simulate(4, 50, start_ts=1000.0, period=60.0)
    assert sim.stream_ids == [f"sensor-{i:05d}" for i in range(4)]
    assert sim.values.shape == (4, 50, len(SENSOR_FEATURES))
    assert sim.values.dtype == np.float32
    assert sim.present.shape == (4, 50) and sim.present.dtype == bool
    np.testing.assert_array_equal(sim.ts, 1000.0 + 60.0 * np.arange(50))
    assert sim.features == SENSOR_FEATURES
    assert np.isfinite(sim.values).all()


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = simulate(3, 40, seed=1), simulate(3, 40, seed=1), simulate(3, 40, seed=2)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.present, b.present)
    assert not np.array_equal(a.values, c.values)


def test_stream_depends_only_on_seed_and_index() -> None:
    small = simulate(5, 300, seed=7)
    large = simulate(40, 600, seed=7)
    np.testing.assert_array_equal(small.values, large.values[:5, :300])
    np.testing.assert_array_equal(small.present, large.present[:5, :300])


def test_streams_differ_from_each_other() -> None:
    sim = simulate(2, 100, faults=False, gaps=False)
    assert not np.allclose(sim.values[0], sim.values[1])


def test_daily_cycle_is_visible() -> None:
    steps_per_day = int(86_400 / DEFAULT_PERIOD)
    sim = simulate(20, 4 * steps_per_day, faults=False, gaps=False)
    temp = sim.values[:, :, 0] - sim.values[:, :, 0].mean(axis=1, keepdims=True)
    # Autocorrelation at one day is strong, at half a day it is negative.
    day = np.mean(temp[:, :-steps_per_day] * temp[:, steps_per_day:]) / np.mean(temp**2)
    half = steps_per_day // 2
    half_day = np.mean(temp[:, :-half] * temp[:, half:]) / np.mean(temp**2)
    assert day > 0.5
    assert half_day < 0


def test_gaps_and_faults_can_be_switched_off() -> None:
    clean = simulate(50, 400, gaps=False, faults=False)
    assert clean.present.all()
    noisy = simulate(50, 400)
    assert 0.95 < noisy.present.mean() < 1.0
    # Stuck sensors repeat a whole row of values on consecutive steps.
    repeats = np.all(noisy.values[:, 1:] == noisy.values[:, :-1], axis=-1)
    assert repeats.any()
    assert not np.all(clean.values[:, 1:] == clean.values[:, :-1], axis=-1).any()


def test_readings_are_time_major_and_skip_gaps() -> None:
    sim = simulate(6, 200, seed=3)
    readings = list(sim.readings())
    assert len(readings) == int(sim.present.sum())
    ts = [r[1] for r in readings]
    assert ts == sorted(ts)
    first_step = [r for r in readings if r[1] == sim.ts[0]]
    assert [r[0] for r in first_step] == [
        sid for sid, ok in zip(sim.stream_ids, sim.present[:, 0], strict=True) if ok
    ]
    sid, t, values = readings[0]
    s = sim.stream_ids.index(sid)
    k = int(np.searchsorted(sim.ts, t))
    assert values == pytest.approx(
        dict(zip(SENSOR_FEATURES, sim.values[s, k].tolist(), strict=True))
    )


def test_large_fleet_is_vectorised() -> None:
    sim = simulate(20_000, 100)
    assert sim.values.shape == (20_000, 100, 3)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        simulate(-1, 10)
    with pytest.raises(ValueError):
        simulate(1, 10, period=0)
