"""End to end against the real broker: readings in, one forecast per valid reading out, equal
to the model run offline, with /readyz following the group assignment."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from service.simulate import simulate
from service.testing import add_sensor_lstm
from tests.conftest import KafkaKit
from tests.integration.servicekit import (
    CLIENTS,
    http_get,
    reading,
    running,
    settings_for,
    wait_until,
)

N_STREAMS = 300
N_STEPS = 10
REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def _produce_simulated(
    kafka: KafkaKit, topic: str, n_streams: int, n_steps: int
) -> dict[str, tuple[list[float], np.ndarray]]:
    """Produce simulated readings keyed by stream; return each stream's (ts, rows) in order."""
    sim = simulate(n_streams, n_steps, seed=11)
    by_stream: dict[str, tuple[list[float], list[list[float]]]] = defaultdict(lambda: ([], []))
    records = []
    for sid, ts, values in sim.readings():
        records.append((sid, reading(sid, ts, values)))
        by_stream[sid][0].append(ts)
        by_stream[sid][1].append([values[f] for f in sim.features])
    kafka.produce(topic, records)
    return {sid: (ts, np.asarray(rows)) for sid, (ts, rows) in by_stream.items()}


@pytest.mark.parametrize("client", CLIENTS)
def test_every_reading_yields_one_forecast_equal_to_the_oracle(
    kafka: KafkaKit, tmp_path: Path, client: str
) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    settings = settings_for(
        kafka.bootstrap, model.registry, model.card.name, kafka.name, **{"kafka.client": client}
    )
    k = settings.kafka
    kafka.create_topic(k.input_topic, 4)
    produced = time.time()
    series = _produce_simulated(kafka, k.input_topic, N_STREAMS, N_STEPS)
    total = sum(len(ts) for ts, _ in series.values())
    assert len(series) == N_STREAMS and total > N_STREAMS * (N_STEPS - 1)

    with running(settings) as svc:
        assert http_get(svc.port, "/healthz")[0] == 200
        out = kafka.consume_until(k.output_topic, total, timeout=60)
        wait_until(lambda: svc.metric("sensorcast_readings_consumed_total") == total, 10, "metrics")
        assert svc.metric("sensorcast_forecasts_produced_total") == total
        # one age per forecast, from its record's timestamp: none older than this test
        ages = svc.metric("sensorcast_reading_to_forecast_seconds_count")
        age_sum = svc.metric("sensorcast_reading_to_forecast_seconds_sum")
        assert ages == total
        assert 0 < age_sum <= total * (time.time() - produced)

    messages = [json.loads(r.value) for r in out]
    assert len(messages) == total
    assert len({(m["stream_id"], m["ts"]) for m in messages}) == total  # exactly one each
    got: dict[str, list[dict]] = defaultdict(list)
    for record, m in zip(out, messages, strict=True):
        assert record.key == m["stream_id"].encode()
        got[m["stream_id"]].append(m)
    for sid, (ts, rows) in series.items():
        ms = sorted(got[sid], key=lambda m: m["ts"])
        assert [m["ts"] for m in ms] == ts
        expected = model.expected(rows)[:, :, 0]  # target "temp"
        actual = np.asarray([m["forecast"]["temp"] for m in ms])
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6)
        for m in ms:
            assert m["model"] == {"name": model.card.name, "version": model.card.version}
            np.testing.assert_allclose(m["horizon_ts"], m["ts"] + 300.0 * np.arange(1, 4))
        assert ms[0]["warm"] is False and ms[-1]["warm"] is True


def test_readyz_turns_true_only_after_assignment_and_later_readings_flow(
    kafka: KafkaKit, tmp_path: Path
) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    settings = settings_for(kafka.bootstrap, model.registry, model.card.name, kafka.name)
    k = settings.kafka
    with running(settings) as svc:
        status, body = http_get(svc.port, "/readyz")
        # The HTTP server is up before the model is loaded and the group joined (a join
        # takes about half the session timeout): not ready yet.
        assert status == 503
        assert json.loads(body)["partitions_assigned"] is False
        svc.wait_ready()
        assert svc.service.readiness.snapshot()["partitions_assigned"] is True
        assert svc.metric("sensorcast_assigned_partitions") == 4
        values = {"temp": 20.0, "pressure": 101.0, "vibration": 0.5}
        kafka.produce(
            k.input_topic, [("late-joiner", reading("late-joiner", 1_700_000_000.0, values))]
        )
        out = kafka.consume_until(k.output_topic, 1, timeout=20)
        assert json.loads(out[0].value)["stream_id"] == "late-joiner"
    assert svc.service.readiness.ready is False


def test_idle_streams_expire_without_new_readings(kafka: KafkaKit, tmp_path: Path) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    settings = settings_for(
        kafka.bootstrap, model.registry, model.card.name, kafka.name, **{"engine.ttl_seconds": 1.0}
    )
    k = settings.kafka
    values = {"temp": 20.0, "pressure": 101.0, "vibration": 0.5}
    with running(settings) as svc:
        svc.wait_ready()
        kafka.produce(
            k.input_topic,
            [(f"idle-{i}", reading(f"idle-{i}", 1_700_000_000.0, values)) for i in range(5)],
        )
        kafka.consume_until(k.output_topic, 5)
        wait_until(
            lambda: svc.metric("sensorcast_evictions_total", {"cause": "ttl"}) == 5,
            15,
            "idle streams to expire",
        )
        wait_until(lambda: svc.metric("sensorcast_active_streams") == 0, 5, "the gauge")
        assert svc.service.engine is not None and len(svc.service.engine.store) == 0


@pytest.mark.skipif(
    not (REPO_MODELS / "sensors-demo").is_dir(), reason="models/sensors-demo is not in the registry"
)
def test_shipped_model_matches_offline_forecast(kafka: KafkaKit) -> None:
    predict = pytest.importorskip("training.predict", reason="the trainer (torch) is not installed")
    from service.registry import Registry

    ref = Registry(REPO_MODELS).resolve("sensors-demo")
    settings = settings_for(kafka.bootstrap, REPO_MODELS, "sensors-demo", kafka.name)
    k = settings.kafka
    kafka.create_topic(k.input_topic, 4)
    series = _produce_simulated(kafka, k.input_topic, 200, 8)
    total = sum(len(ts) for ts, _ in series.values())
    with running(settings):
        out = kafka.consume_until(k.output_topic, total, timeout=60)
    got: dict[str, list[dict]] = defaultdict(list)
    for r in out:
        m = json.loads(r.value)
        got[m["stream_id"]].append(m)
    assert sum(len(v) for v in got.values()) == total
    from service.modelcard import ModelCard

    card = ModelCard.read(ref.directory)
    for sid, (_ts, rows) in series.items():
        ms = sorted(got[sid], key=lambda m: m["ts"])
        expected = predict.offline_forecast(ref.directory, rows)  # [T, horizon, n_targets]
        actual = np.stack([np.asarray([m["forecast"][t] for t in card.targets]).T for m in ms])
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6)
