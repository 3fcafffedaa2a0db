"""Three replicas in one group while readings flow: one joins, one leaves gracefully, one is
killed. Streams move with their partitions (restored from the changelog by their new
owner); each process holds only the streams of the partitions assigned to it; the final
states and the distinct forecasts equal an uninterrupted run's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from service.testing import add_sensor_lstm
from tests.conftest import KafkaKit
from tests.fault.faultkit import (
    PARTITIONS,
    Feed,
    Names,
    Oracle,
    ServeProcess,
    await_condition,
    distinct_forecasts,
    streams_by_partition,
    wait_committed,
    wait_for_forecasts,
)

STREAMS = 40
STEPS = 60

pytestmark = pytest.mark.slow


def _share(members: Sequence[ServeProcess]) -> bool:
    """The members own every partition between them, each at least one."""
    counts = [m.metric("sensorcast_assigned_partitions") for m in members]
    return sum(counts) == PARTITIONS and min(counts) > 0


def _holds_only_its_partitions(member: ServeProcess, by_partition: dict[int, set[str]]) -> bool:
    """The streams in memory are exactly those of the member's assigned partitions."""
    assigned = member.assigned()
    expected = sum(len(by_partition.get(p, ())) for p in assigned)
    held = member.metric("sensorcast_active_streams")
    owned = member.metric("sensorcast_assigned_partitions")
    return bool(assigned) and owned == len(assigned) and held == expected


def test_join_leave_and_kill_among_three_replicas_keep_states_and_forecasts(
    kafka: KafkaKit, tmp_path: Path
) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    names = Names.fresh(kafka)
    feed = Feed(kafka.bootstrap, names.input, STREAMS, STEPS, pause=0.3)
    procs: list[ServeProcess] = []

    def start(name: str) -> ServeProcess:
        proc = ServeProcess(kafka, model, names, tmp_path / f"{name}.log")
        procs.append(proc)
        return proc

    try:
        feed.send_steps([0])  # every stream exists from the first step on
        by_partition = streams_by_partition(kafka.bootstrap, names.input)
        assert sum(len(s) for s in by_partition.values()) == STREAMS
        feed.start(first_step=1)
        a, b = start("a"), start("b")
        a.wait_ready(90)
        b.wait_ready(90)
        await_condition(lambda: _share([a, b]), 60, "a and b to share the partitions")

        c = start("c")  # joins
        c.wait_ready(90)
        await_condition(lambda: _share([a, b, c]), 60, "a, b and c to share the partitions")
        for member in (a, b, c):
            await_condition(
                lambda m=member: _holds_only_its_partitions(m, by_partition),
                30,
                "each member to hold only its partitions' streams",
            )

        assert b.stop() == 0, b.log()  # leaves gracefully
        await_condition(lambda: _share([a, c]), 60, "a and c to take over b's partitions")
        for member in (a, c):
            await_condition(
                lambda m=member: _holds_only_its_partitions(m, by_partition),
                30,
                "a and c to hold only their partitions' streams",
            )

        a.kill()  # killed: its partitions go to c once its session expires
        await_condition(
            lambda: c.metric("sensorcast_assigned_partitions") == PARTITIONS,
            60,
            "c to own every partition",
        )
        feed.join()
        wait_for_forecasts(kafka.bootstrap, names.output, feed.total, 90)
        wait_committed(kafka.bootstrap, names.group, names.input, feed.total, 60)
        await_condition(
            lambda: _holds_only_its_partitions(c, by_partition), 30, "c to hold every stream"
        )
        assert c.metric("sensorcast_active_streams") == STREAMS
        assert c.stop() == 0, c.log()
    finally:
        for proc in procs:
            proc.ensure_dead()
        feed.close()
    for proc in procs:
        assert "Traceback" not in proc.log()
    restored_by_c = c.log().count("state restored")
    assert restored_by_c >= 2  # restored on joining and again on taking over

    oracle = Oracle.run(kafka.bootstrap, model, names.input)
    oracle.check_states(kafka.bootstrap, names.changelog)
    oracle.check_forecasts(distinct_forecasts(kafka.bootstrap, names.output))
