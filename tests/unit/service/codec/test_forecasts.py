"""The forecast encoder: forecasts encode per DESIGN.md 3, a whole batch as each one would."""

from __future__ import annotations

import json
import time

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from service.codec import ForecastEncoder
from service.core.readings import Forecast, ForecastBatch
from service.modelcard import ModelCard
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


def _one_message_at_a_time(card: ModelCard, forecasts: ForecastBatch) -> list[bytes]:
    """The batch as one orjson call per message writes it (each member a Python or numpy
    value): the plain form `encode_batch` splices from per-column text."""
    targets = list(card.targets)
    out = []
    scores = (
        None
        if forecasts.anomaly is None
        else np.round(forecasts.anomaly.astype(np.float64), 3).tolist()
    )
    by_target = np.ascontiguousarray(forecasts.values.transpose(0, 2, 1))
    horizon_ts = forecasts.horizon_ts()
    for i, stream_id in enumerate(forecasts.stream_ids):
        message: dict[str, object] = {
            "stream_id": stream_id,
            "ts": forecasts.ts.tolist()[i],
            "model": {"name": card.name, "version": card.version},
            "horizon_ts": horizon_ts[i],
            "forecast": dict(zip(targets, by_target[i], strict=True)),
            "warm": bool(forecasts.warm[i]),
            "partition": int(forecasts.partitions[i]),
            "offset": int(forecasts.offsets[i]),
        }
        if scores is not None and forecasts.anomalous is not None:
            flagged = [
                t for t, o in zip(targets, forecasts.anomalous[i].tolist(), strict=True) if o
            ]
            message["anomaly"] = {"flag": bool(flagged), "score": scores[i], "targets": flagged}
        out.append(orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY))
    return out


_floats = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def _batches(draw: st.DrawFn) -> tuple[ModelCard, ForecastBatch]:
    n_targets = draw(st.integers(1, 3))
    horizon = draw(st.integers(1, 4))
    targets = tuple(
        draw(
            st.lists(
                st.text(min_size=1, max_size=5), min_size=n_targets, max_size=n_targets, unique=True
            )
        )
    )
    card = make_card(
        targets=targets, horizon=horizon, period=draw(st.sampled_from([1.0, 60.0, 0.25]))
    )
    n = draw(st.integers(0, 5))
    values = np.array(
        draw(st.lists(_floats, min_size=n * horizon * n_targets, max_size=n * horizon * n_targets)),
        np.float32,
    ).reshape(n, horizon, n_targets)
    scored = draw(st.booleans())
    batch = ForecastBatch(
        draw(st.lists(st.text(max_size=8), min_size=n, max_size=n)),
        np.array(draw(st.lists(st.floats(0, 4e9), min_size=n, max_size=n)), np.float64),
        values,
        np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), np.bool_),
        np.array(draw(st.lists(st.integers(0, 255), min_size=n, max_size=n)), np.int32),
        np.array(draw(st.lists(st.integers(0, 2**62), min_size=n, max_size=n)), np.int64),
        np.full(n, NOW),
        card.period,
        anomaly=np.array(
            draw(st.lists(st.floats(0, 50, width=32), min_size=n, max_size=n)), np.float32
        )
        if scored
        else None,
        anomalous=np.array(
            draw(st.lists(st.booleans(), min_size=n * n_targets, max_size=n * n_targets)), np.bool_
        ).reshape(n, n_targets)
        if scored
        else None,
    )
    return card, batch


@settings(max_examples=300, deadline=None)
@given(_batches())
def test_encode_batch_is_byte_for_byte_one_message_at_a_time(
    case: tuple[ModelCard, ForecastBatch],
) -> None:
    card, batch = case
    assert ForecastEncoder(card).encode_batch(batch) == _one_message_at_a_time(card, batch)
