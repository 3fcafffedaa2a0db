"""A hot swap while readings flow through the real broker: a new version added to the
registry is verified and swapped in; every reading has exactly one distinct forecast, each
stream switches version once, and its first forecast of the new version equals the new
model run offline over the readings before it (as many as its warm-up steps) and then it.
A broken version is refused, counted, and the served one keeps serving."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from service.simulate import SENSOR_FEATURES
from service.testing import RegisteredLstm, add_sensor_lstm
from tests.conftest import KafkaKit
from tests.integration.servicekit import (
    RunningService,
    reading,
    settings_for,
    wait_until,
)

STREAMS = 12
STEPS = 24
T0 = 1_700_000_000.0
PERIOD = 300.0
WARMUP = 4


def _values(i: int, step: int) -> dict[str, float]:
    """In the training range of the test model's features."""
    return {
        "temp": 18.0 + 0.4 * i + 2.0 * np.sin(step / 3.0 + i),
        "pressure": 100.0 + 0.2 * i + 0.1 * step % 3,
        "vibration": 0.4 + 0.05 * ((step + i) % 5),
    }


def test_a_new_version_is_swapped_in_while_serving_and_a_broken_one_refused(
    kafka: KafkaKit, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    v1 = add_sensor_lstm(root, warmup_steps=WARMUP)
    settings = settings_for(
        kafka.bootstrap,
        root,
        v1.card.name,
        kafka.name,
        **{"model.watch_interval": 0.2, "kafka.partitions": 2},
    )
    k = settings.kafka
    svc = RunningService(settings).start()
    sent = threading.Event()
    rows: dict[str, list[list[float]]] = {f"s{i:02d}": [] for i in range(STREAMS)}
    v2: list[RegisteredLstm] = []

    def feed() -> None:
        for step in range(STEPS):
            batch = []
            for i in range(STREAMS):
                values = _values(i, step)
                rows[f"s{i:02d}"].append([values[f] for f in SENSOR_FEATURES])
                batch.append((f"s{i:02d}", reading(f"s{i:02d}", T0 + PERIOD * step, values)))
            kafka.produce(k.input_topic, batch)
            if step == STEPS // 3:
                # a new version while readings flow
                v2.append(add_sensor_lstm(root, version="2", seed=7, warmup_steps=WARMUP))
            sent.wait(0.15)

    try:
        svc.wait_ready()
        feeder = threading.Thread(target=feed)
        feeder.start()
        feeder.join(120)
        wait_until(
            lambda: svc.metric("sensorcast_model_swaps_total", {"outcome": "ok"}) == 1,
            30,
            "the swap",
        )
        messages = [
            json.loads(r.value)
            for r in kafka.consume_until(k.output_topic, STREAMS * STEPS, timeout=60)
        ]
        # a broken version 3 is refused; version 2 keeps serving
        broken = root / v1.card.name / "3"
        broken.mkdir()
        (broken / "card.json").write_text(v2[0].card.model_copy(update={"version": "3"}).to_json())
        (broken / "model.onnx").write_bytes(b"not a model")
        wait_until(
            lambda: svc.metric("sensorcast_model_swaps_total", {"outcome": "failed"}) >= 1,
            30,
            "the broken version refused",
        )
        kafka.produce(
            k.input_topic,
            [("s00", reading("s00", T0 + PERIOD * STEPS, _values(0, STEPS)))],
        )
        after = kafka.consume_until(k.output_topic, STREAMS * STEPS + 1, timeout=30)
        last = json.loads(after[-1].value) if after[-1].value else {}
        assert last["stream_id"] == "s00" and last["model"]["version"] == "2"
        assert svc.metric("sensorcast_model_swaps_total", {"outcome": "failed"}) == 1
    finally:
        assert svc.stop() == 0

    by_stream: dict[str, list[dict[str, Any]]] = {}
    for m in messages:
        by_stream.setdefault(m["stream_id"], []).append(m)
    for sid, ms in by_stream.items():
        ms.sort(key=lambda m: m["ts"])
        # exactly one distinct forecast per reading
        assert [m["ts"] for m in ms] == [T0 + PERIOD * s for s in range(STEPS)], sid
        versions = [m["model"]["version"] for m in ms]
        switch = versions.index("2")
        assert versions == ["1"] * switch + ["2"] * (STEPS - switch), sid
        first = ms[switch]
        history = np.asarray(rows[sid][max(0, switch - WARMUP) : switch + 1])
        want = v2[0].expected(history)[-1]
        np.testing.assert_allclose(
            np.asarray(first["forecast"]["temp"]), want[:, 0], rtol=1e-4, atol=1e-4, err_msg=sid
        )
        assert first["warm"] is (len(history) >= WARMUP)
    assert svc.metric("sensorcast_rewarms_total", {"reason": "model_change"}) == STREAMS
