"""Anomaly flags with the shipped sensors-demo model on the simulator's sensors.

On clean simulated data (no faults) the default threshold flags well under the documented
0.1% of readings (docs/service.md); the simulator's own faults (temperature spikes of +15
degrees with five-fold vibration) and a spike injected by hand are flagged where they are.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.core.engine import EngineConfig, StreamEngine
from service.core.model import OnnxStepModel
from service.core.readings import ReadingBatch
from service.registry import Registry
from service.simulate import simulate

DOCUMENTED_RATE = 0.001  # docs/service.md: under 0.1% of clean readings at the default


@pytest.fixture(scope="module")
def model() -> OnnxStepModel:
    return OnnxStepModel.from_loaded(Registry("models").load("sensors-demo"))


def _flags(engine: StreamEngine, values: np.ndarray, ts: np.ndarray, ids: list[str]) -> np.ndarray:
    """``[streams, steps]``: whether each reading was flagged."""
    out = np.zeros(values.shape[:2], np.bool_)
    for t in range(values.shape[1]):
        batch = ReadingBatch.of(ids, np.full(len(ids), ts[t]), values[:, t], offsets=t)
        forecasts = engine.process_batch(batch, now=0.0).forecasts
        assert forecasts.anomalous is not None
        out[:, t] = forecasts.anomalous.any(axis=1)
    return out


def test_clean_data_is_rarely_flagged_and_an_injected_spike_is(model: OnnxStepModel) -> None:
    sim = simulate(100, 400, seed=4, faults=False, gaps=False)
    values = sim.values.copy()
    values[17, 300, 0] += 8.0  # temperature, a few degrees out of its daily cycle
    flags = _flags(StreamEngine(model, EngineConfig()), values, sim.ts, sim.stream_ids)
    assert flags[17, 300]
    clean = np.ones_like(flags)
    clean[17, 300:302] = False  # the spike, and the reading right after it
    assert flags[clean].mean() < DOCUMENTED_RATE


def test_the_simulators_faults_are_flagged(model: OnnxStepModel) -> None:
    faulty = simulate(60, 400, seed=9, faults=True, gaps=False)
    clean = simulate(60, 400, seed=9, faults=False, gaps=False)
    fault = np.abs(faulty.values[..., 0] - clean.values[..., 0]) > 10  # the spikes
    fault[:, :40] = False  # streams still warming up have no scale to judge by
    assert fault.sum() > 20
    flags = _flags(StreamEngine(model, EngineConfig()), faulty.values, faulty.ts, faulty.stream_ids)
    assert flags[fault].mean() > 0.9
    assert flags[~fault].mean() < 0.01
