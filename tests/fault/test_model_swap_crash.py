"""SIGKILL a `sensorcast serve` process while it re-warms its streams after a hot swap, then
restart it (on the new version, `latest`): the final per-stream states and the distinct
forecasts equal those of an uninterrupted run that swapped at the same point (the
readings before it on version 1, the rest on version 2), so no reading was applied twice,
none was lost, and a stream whose version-1 state was on the changelog was re-warmed from
its kept readings exactly as the swap would have."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.testing import add_sensor_lstm
from tests.conftest import KafkaKit
from tests.fault.faultkit import (
    BASE_TS,
    PERIOD,
    Feed,
    Names,
    Oracle,
    ServeProcess,
    await_condition,
    distinct_forecasts,
    wait_committed,
    wait_for_forecasts,
)

STREAMS = 40
STEPS = 16
WARMUP = 4

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_a_sigkill_during_the_rewarms_of_a_swap_then_restart_matches_the_uninterrupted_run(
    delay: float, kafka: KafkaKit, tmp_path: Path
) -> None:
    model = add_sensor_lstm(tmp_path / "models", warmup_steps=WARMUP)
    names = Names.fresh(kafka)
    feed = Feed(kafka.bootstrap, names.input, STREAMS, STEPS)
    log_path = tmp_path / "serve.log"
    half = STREAMS * STEPS // 2
    procs: list[ServeProcess] = []
    try:
        feed.send_steps(range(STEPS // 2))
        first = ServeProcess(kafka, model, names, log_path, model__watch_interval="0.2")
        procs.append(first)
        first.wait_ready(90)
        wait_for_forecasts(kafka.bootstrap, names.output, half, 60)
        wait_committed(kafka.bootstrap, names.group, names.input, half, 60)
        add_sensor_lstm(model.registry, version="2", seed=11, warmup_steps=WARMUP)
        await_condition(
            lambda: first.metric("sensorcast_model_swaps_total", outcome="ok") == 1,
            30,
            "the swap to version 2",
        )
        feed.send_steps(range(STEPS // 2, STEPS))
        await_condition(
            lambda: first.metric("sensorcast_rewarms_total", reason="model_change") > 0,
            30,
            "the first re-warms",
        )
        time.sleep(delay)
        first.kill()

        last = ServeProcess(kafka, model, names, log_path)
        procs.append(last)
        last.wait_ready(90)
        wait_for_forecasts(kafka.bootstrap, names.output, feed.total, 90)
        wait_committed(kafka.bootstrap, names.group, names.input, feed.total, 60)
        assert last.stop() == 0, last.log()
    finally:
        for proc in procs:
            proc.ensure_dead()
        feed.close()
    assert "Traceback" not in log_path.read_text()

    oracle = Oracle.run(
        kafka.bootstrap, model, names.input, swap=(BASE_TS + PERIOD * (STEPS // 2), "2")
    )
    oracle.check_states(kafka.bootstrap, names.changelog)
    oracle.check_forecasts(distinct_forecasts(kafka.bootstrap, names.output))
