"""SIGKILL a `sensorcast serve` process at random moments while readings flow, five times,
restarting it each time: the final per-stream states and the distinct forecasts equal an
uninterrupted run's, so no reading was applied twice and none was lost."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from service.testing import add_sensor_lstm
from tests.conftest import KafkaKit
from tests.fault.faultkit import (
    Feed,
    Names,
    Oracle,
    ServeProcess,
    await_condition,
    distinct_forecasts,
    wait_committed,
    wait_for_forecasts,
)
from tests.integration.servicekit import CLIENTS

STREAMS = 30
STEPS = 160  # at the feed's pace (2 minutes) far more than five restarts take: the rest go unpaced
KILLS = 5

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("client", CLIENTS)
def test_five_sigkills_at_random_moments_leave_states_and_forecasts_as_uninterrupted(
    kafka: KafkaKit, tmp_path: Path, client: str
) -> None:
    rng = random.Random(20261122)
    model = add_sensor_lstm(tmp_path / "models")
    names = Names.fresh(kafka)
    # paced so that readings keep coming through all five kills (each restart waits out the
    # killed member's session before it is assigned)
    feed = Feed(kafka.bootstrap, names.input, STREAMS, STEPS, pause=0.75)
    log_path = tmp_path / "serve.log"
    procs: list[ServeProcess] = []
    try:
        feed.start()
        for _ in range(KILLS):
            proc = ServeProcess(kafka, model, names, log_path, kafka__client=client)
            procs.append(proc)
            proc.wait_ready(90)
            await_condition(
                lambda p=proc: p.metric("sensorcast_readings_consumed_total") > 0 or feed.done(),
                60,
                "the restarted process to consume readings",
            )
            # the random moment: anywhere in polling, processing or a checkpoint
            time.sleep(rng.uniform(0.0, 1.2))
            proc.kill()
        assert not feed.done(), "the feed ended before the last kill"
        feed.hurry()  # the readings flowed through every kill: the rest need no pacing
        feed.join()
        final = ServeProcess(kafka, model, names, log_path, kafka__client=client)
        procs.append(final)
        final.wait_ready(90)
        wait_for_forecasts(kafka.bootstrap, names.output, feed.total, 90)
        wait_committed(kafka.bootstrap, names.group, names.input, feed.total, 60)
        assert final.stop() == 0, final.log()
    finally:
        for proc in procs:
            proc.ensure_dead()
        feed.close()
    log = log_path.read_text()
    assert "Traceback" not in log
    assert log.count("state restored") >= KILLS  # every restart restored from the changelog

    oracle = Oracle.run(kafka.bootstrap, model, names.input)
    oracle.check_states(kafka.bootstrap, names.changelog)
    oracle.check_forecasts(distinct_forecasts(kafka.bootstrap, names.output))
