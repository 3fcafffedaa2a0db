"""The forecast encoder: forecasts encode per DESIGN.md 3, a whole batch as each one would."""

from __future__ import annotations

import json
import time

import numpy as np

from service.codec import ForecastEncoder
from service.core.readings import Forecast, ForecastBatch
from service.testing import make_card

NOW = 1_800_000_000.0


def test_forecast_encoding() -> None:
    card = make_card(targets=("temp", "load"), horizon=3, period=60.0)
    values = np.arange(6, dtype=np.float32).reshape(3, 2)  # [horizon, n_targets]
    forecast = Forecast(
        "pump-1", 1000.0, [1060.0, 1120.0, 1180.0], values, True, 2, 40, time.time()
    )
    doc = json.loads(ForecastEncoder(card).encode(forecast))
    assert doc == {
        "stream_id": "pump-1",
        "ts": 1000.0,
        "model": {"name": card.name, "version": card.version},
        "horizon_ts": [1060.0, 1120.0, 1180.0],
        "forecast": {"temp": [0.0, 2.0, 4.0], "load": [1.0, 3.0, 5.0]},
        "warm": True,
        "partition": 2,
        "offset": 40,
    }


def test_encode_batch_writes_what_encode_writes_at_float32_precision() -> None:
    card = make_card(targets=("temp", "load"), horizon=3, period=60.0)
    rng = np.random.default_rng(0)
    batch = ForecastBatch(
        ["pump-1", "pump-2"],
        np.array([1000.0, 1_800_000_000.25]),
        rng.normal(20, 5, (2, 3, 2)).astype(np.float32),
        np.array([True, False]),
        np.array([2, 0], np.int32),
        np.array([40, 41]),
        np.array([NOW, NOW]),
        period=60.0,
    )
    encoder = ForecastEncoder(card)
    encoded = encoder.encode_batch(batch)
    assert len(encoded) == 2
    for message, forecast in zip(encoded, batch.forecasts(), strict=True):
        doc = json.loads(message)
        expected = json.loads(encoder.encode(forecast))
        assert doc.keys() == expected.keys()
        assert {k: v for k, v in doc.items() if k != "forecast"} == {
            k: v for k, v in expected.items() if k != "forecast"
        }
        for target in ("temp", "load"):
            # the text is float32's shortest: it reads back to the very same float32
            assert np.array_equal(
                np.array(doc["forecast"][target], np.float32),
                np.array(expected["forecast"][target], np.float32),
            )
    assert json.loads(encoded[1])["horizon_ts"] == [
        1_800_000_060.25,
        1_800_000_120.25,
        1_800_000_180.25,
    ]
    assert encoder.encode_batch(ForecastBatch.empty(3, 2, 60.0)) == []
