"""Offline/online parity for the shipped model: the engine agrees with the trainer's torch model.

One stream of the model's own data set is fed one reading at a time, in random micro-batches,
interleaved with 1,000 other streams; its forecasts must equal `offline_forecast` (the torch
model run over the whole series from the initial state) to a relative error of 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.core.engine import StreamEngine
from service.core.model import OnnxStepModel
from service.core.readings import Reading
from service.errors import RegistryError
from service.registry import Registry
from service.testing import drive, interleave, random_batches, readings_for

pytest.importorskip("torch", reason="the offline oracle needs the train extra")

REGISTRY = Path(__file__).resolve().parents[4] / "models"
MODEL = "sensors-demo"


@pytest.mark.slow
def test_sensors_demo_online_equals_offline() -> None:
    from training.data import load_dataset
    from training.predict import offline_forecast

    try:
        loaded = Registry(REGISTRY).load(MODEL)
    except RegistryError:
        pytest.skip(f"{MODEL} is not in {REGISTRY}")
    card = loaded.card
    config = card.provenance.config
    assert card.provenance.data == "synthetic"
    dataset = load_dataset(
        "synthetic",
        n_streams=config["n_streams"],
        n_steps=config["n_steps"],
        seed=config["data_seed"],
    )
    series = dataset.series()[7]
    expected = offline_forecast(loaded.ref.directory, series.values)

    rng = np.random.default_rng(11)
    test_stream = [
        Reading(series.stream_id, float(ts), dict(zip(card.features, row, strict=True)), 0, t)
        for t, (ts, row) in enumerate(zip(series.ts.tolist(), series.values.tolist(), strict=True))
    ]
    mean = np.asarray(card.scaler.features.mean)
    std = np.asarray(card.scaler.features.std)
    others = [
        readings_for(
            f"other-{i}",
            mean + std * rng.normal(size=(int(rng.integers(1, 30)), card.n_features)),
            features=card.features,
            start=float(series.ts[0]) + float(rng.integers(0, 50)) * card.period,
            period=card.period,
        )
        for i in range(1000)
    ]
    merged = interleave([test_stream, *others], rng)
    engine = StreamEngine(OnnxStepModel.from_loaded(loaded))
    sink = drive(engine, random_batches(merged, rng, 64))

    assert sink.rejects == [] and sink.drops == []
    got = sink.values_of(series.stream_id)
    assert got.shape == expected.shape == (len(series.ts), card.horizon, card.n_targets)
    relative = np.abs(got - expected) / np.maximum(np.abs(expected), 1e-3)
    assert float(relative.max()) <= 1e-4
    assert len(engine.store) == 1001
