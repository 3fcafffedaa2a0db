"""Forecast scores and anomaly flags through the real broker, read from /metrics.

`sensorcast serve` with the shipped sensors-demo model over the simulator's clean readings
(one of every stream in turn, with a +15 degree spike in one stream, the size of the
simulator's own faults): once every reading is checkpointed, the counters on /metrics equal
the scores of the engine run over the same readings (the engine's scoring is checked against
an independent oracle in tests/unit/service/core/test_scoring.py), and the spiked reading's
forecast message is the one flagged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from service.registry import Registry
from service.simulate import simulate
from service.testing import RegisteredLstm
from tests.conftest import KafkaKit
from tests.fault.faultkit import (
    BASE_TS,
    PERIOD,
    Feed,
    Names,
    Oracle,
    ServeProcess,
    accuracy_totals,
    await_condition,
    read_topic,
    stream_id,
    wait_committed,
)
from tests.integration.servicekit import CLIENTS

STREAMS = 12
STEPS = 70  # the model warms up over 36
SPIKE = (5, 60)  # stream, step
ROOT = Path(__file__).resolve().parents[2]
SIMULATED = simulate(STREAMS, STEPS, seed=3, start_ts=BASE_TS, faults=False, gaps=False)


@pytest.mark.parametrize("client", CLIENTS)
def test_metrics_count_every_scored_pair_and_the_spike_is_flagged(
    kafka: KafkaKit, tmp_path: Path, client: str
) -> None:
    registry = ROOT / "models"
    # the shipped model: the engine over the same readings is the oracle (no numpy one)
    model = RegisteredLstm(registry, Registry(registry).load("sensors-demo").card, None)  # type: ignore[arg-type]
    names = Names.fresh(kafka)
    feed = Feed(kafka.bootstrap, names.input, STREAMS, STEPS, values=_spiked)
    serve = ServeProcess(kafka, model, names, tmp_path / "serve.log", kafka__client=client)
    try:
        serve.wait_ready(90)
        feed.send_steps(range(STEPS))
        wait_committed(kafka.bootstrap, names.group, names.input, feed.total, 90)
        oracle = Oracle.run(kafka.bootstrap, model, names.input)
        assert oracle.scores is not None and oracle.scores[0].sum() > 0
        want = oracle.scores
        await_condition(
            lambda: accuracy_totals(serve.metrics(), model.card)[0].sum() >= want[0].sum(),
            30,
            "every pair counted",
        )
        time.sleep(0.5)
        counted = accuracy_totals(serve.metrics(), model.card)
        anomalies = sum(
            serve.metric("sensorcast_anomalies_total", model="sensors-demo:1", target=t)
            for t in model.card.targets
        )
        assert serve.stop() == 0, serve.log()
    finally:
        serve.ensure_dead()
        feed.close()
    np.testing.assert_array_equal(counted[0], want[0])
    np.testing.assert_allclose(counted[1:], want[1:], rtol=1e-5)
    flagged = set()
    for record in read_topic(kafka.bootstrap, names.output):
        message = json.loads(record.value)
        assert set(message["anomaly"]) == {"flag", "score", "targets"}
        if message["anomaly"]["flag"]:
            flagged.add((message["stream_id"], message["ts"]))
    assert flagged == {(stream_id(SPIKE[0]), BASE_TS + PERIOD * SPIKE[1])}
    assert anomalies == 1


def _spiked(stream: int, step: int) -> dict[str, float]:
    """The simulator's clean readings, with one temperature spike."""
    row = SIMULATED.values[stream, step].astype(float).tolist()
    values = dict(zip(SIMULATED.features, row, strict=True))
    if (stream, step) == SPIKE:
        values["temp"] += 15.0
    return values
