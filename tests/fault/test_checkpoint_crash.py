"""A process that dies at each step of the checkpoint (the fault-injection setting
``debug.crash_at`` exits it abruptly there): after a restart the per-stream states and the
distinct forecasts equal those of an uninterrupted run, and readings the changelog already
holds are skipped, not applied again.

The periodic checkpoint is pipelined (`Checkpointer.periodic` in service/checkpoint.py): states are sent at one
step and confirmed, with their offsets committed, at the next. ``mid_changelog`` dies while
they are sent; ``after_flush``, ``after_changelog`` and ``after_commit`` die while a
checkpoint is completed, after the forecast flush, the changelog flush and the commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.app import CRASH_EXIT_STATUS
from service.testing import add_sensor_lstm
from tests.conftest import KafkaKit
from tests.fault.faultkit import (
    Feed,
    Names,
    Oracle,
    ServeProcess,
    distinct_forecasts,
    wait_committed,
    wait_for_forecasts,
)

STREAMS = 24
STEPS = 8

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "point", ["after_flush", "mid_changelog", "after_changelog", "after_commit"]
)
def test_crash_at_a_checkpoint_step_then_restart_matches_the_uninterrupted_run(
    point: str, kafka: KafkaKit, tmp_path: Path
) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    names = Names.fresh(kafka)
    feed = Feed(kafka.bootstrap, names.input, STREAMS, STEPS)
    log_path = tmp_path / "serve.log"
    procs: list[ServeProcess] = []
    try:
        # A clean run over the first half leaves a committed checkpoint behind.
        feed.send_steps(range(STEPS // 2))
        first = ServeProcess(kafka, model, names, log_path)
        procs.append(first)
        first.wait_ready()
        wait_for_forecasts(kafka.bootstrap, names.output, STREAMS * STEPS // 2, 60)
        wait_committed(kafka.bootstrap, names.group, names.input, STREAMS * STEPS // 2, 60)
        assert first.stop() == 0, first.log()

        # The second half is processed by a process that exits inside its first checkpoint
        # with states to write.
        feed.send_steps(range(STEPS // 2, STEPS))
        crashing = ServeProcess(kafka, model, names, log_path, DEBUG__CRASH_AT=point)
        procs.append(crashing)
        assert crashing.wait_exit(90) == CRASH_EXIT_STATUS, crashing.log()
        assert f"fault injection: exiting at checkpoint point={point}" in crashing.log()

        last = ServeProcess(kafka, model, names, log_path)
        procs.append(last)
        last.wait_ready(90)
        wait_for_forecasts(kafka.bootstrap, names.output, STREAMS * STEPS, 60)
        wait_committed(kafka.bootstrap, names.group, names.input, STREAMS * STEPS, 60)
        skipped = last.metric("sensorcast_drops_total", reason="already_applied")
        assert last.stop() == 0, last.log()
    finally:
        for proc in procs:
            proc.ensure_dead()
        feed.close()
    log = log_path.read_text()
    assert "Traceback" not in log

    if point in ("mid_changelog", "after_changelog"):
        # states written ahead of their offsets: the replayed readings they hold are skipped
        assert skipped > 0
    elif point == "after_commit":
        assert skipped == 0
    # after_flush: the states were sent an interval before and have arrived or not
    oracle = Oracle.run(kafka.bootstrap, model, names.input)
    oracle.check_states(kafka.bootstrap, names.changelog)
    oracle.check_forecasts(distinct_forecasts(kafka.bootstrap, names.output))
