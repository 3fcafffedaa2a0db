"""The ``debug.crash_at`` wrappers (`service.faults.Crashes`): each point exits exactly where
its docstring says, and nowhere else. ``os._exit`` is replaced by an exception, so a script
of checkpoint operations can run on past an exit and show every place a point fires."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pytest

from service.errors import SensorcastError, TransportError
from service.faults import CRASH_EXIT_STATUS, Crashes, CrashPoint
from service.testing.transport import MemoryBroker, MemoryChangelogWriter, MemorySink
from tests.unit.service.memberkit import Member


class Exited(Exception):
    """What ``os._exit`` raises here."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@pytest.fixture(autouse=True)
def _no_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    def exit_(status: int) -> None:
        raise Exited(status)

    # the os module's own, which the wrappers call; put back after the test
    monkeypatch.setattr("service.faults.os._exit", exit_)
    # An exit flushes the root logger's handlers: only pytest's own while here, not one an
    # earlier test left on a capture stream since closed (``cli.main``'s basicConfig).
    monkeypatch.setattr(logging.getLogger(), "handlers", [])


@dataclass(frozen=True)
class Exit:
    """Where a point fired, and what the broker held then."""

    step: str
    changelog: list[tuple[bytes, bytes | None]]
    forecasts: int
    committed: dict[int, int]


class Checkpoint:
    """A sink, a changelog writer and a commit on a memory broker, in `Crashes`' wrappers."""

    def __init__(self, point: CrashPoint) -> None:
        self.broker = broker = MemoryBroker(partitions=1)
        crashes = Crashes(point)
        self.sink = crashes.sink(MemorySink(broker))
        self.changelog = crashes.changelog(MemoryChangelogWriter(broker, "grp.state"))

        def commit(offsets: Mapping[int, int], timeout: float) -> None:
            if "commit" in broker.failing:
                raise TransportError("commit failed")
            broker.committed.update(offsets)

        self.commit = crashes.commit(commit)
        self.errors: list[str] = []  # steps that raised the broker's error

    def send(self, *keys: str) -> None:
        self.changelog.send([0] * len(keys), list(keys), [k.encode() for k in keys])

    def run(self, steps: list[tuple[str, Callable[[], object]]]) -> list[Exit]:
        """Every step, on past an exit or a failure; where the point fired."""
        exits = []
        for name, step in steps:
            try:
                step()
            except SensorcastError:
                self.errors.append(name)
            except Exited as exited:
                assert exited.status == CRASH_EXIT_STATUS
                broker = self.broker
                changelog = list(broker.changelog[0])
                exits.append(Exit(name, changelog, len(broker.forecasts), dict(broker.committed)))
        return exits


def _script(cp: Checkpoint) -> list[tuple[str, Callable[[], object]]]:
    """Checkpoint operations, each place a point might fire tried with and without changelog
    records on their way; the states are sent once, a-d."""
    return [
        ("flush forecasts, nothing sent", lambda: cp.sink.flush(1.0)),
        ("flush changelog, nothing sent", lambda: cp.changelog.flush(1.0)),
        ("commit, nothing acknowledged", lambda: cp.commit({0: 1}, 1.0)),
        ("send no states", lambda: cp.changelog.send([], [], [])),
        ("flush forecasts after an empty send", lambda: cp.sink.flush(1.0)),
        ("flush changelog after an empty send", lambda: cp.changelog.flush(1.0)),
        ("commit after an empty send", lambda: cp.commit({0: 2}, 1.0)),
        ("forecast", lambda: cp.sink.send_forecasts(["a"], [b"f"])),
        ("send states", lambda: cp.send("a", "b", "c", "d")),
        ("flush forecasts, states unacknowledged", lambda: cp.sink.flush(1.0)),
        ("flush changelog, states unacknowledged", lambda: cp.changelog.flush(1.0)),
        ("flush forecasts, states acknowledged", lambda: cp.sink.flush(1.0)),
        ("flush changelog again", lambda: cp.changelog.flush(1.0)),
        ("commit, states acknowledged", lambda: cp.commit({0: 3}, 1.0)),
        ("commit again", lambda: cp.commit({0: 4}, 1.0)),
    ]


def test_mid_changelog_exits_after_half_the_first_states_are_sent_and_acknowledged() -> None:
    cp = Checkpoint("mid_changelog")
    (exit_,) = cp.run(_script(cp))
    assert exit_.step == "send states"
    assert exit_.changelog == [(b"a", b"a"), (b"b", b"b")]


def test_after_flush_exits_on_the_forecasts_flush_while_states_are_on_their_way() -> None:
    cp = Checkpoint("after_flush")
    (exit_,) = cp.run(_script(cp))
    assert exit_.step == "flush forecasts, states unacknowledged"
    assert exit_.forecasts == 1  # flushed first
    assert exit_.changelog == []


def test_after_changelog_exits_once_the_changelog_acknowledged_states() -> None:
    cp = Checkpoint("after_changelog")
    (exit_,) = cp.run(_script(cp))
    assert exit_.step == "flush changelog, states unacknowledged"
    assert [key for key, _ in exit_.changelog] == [b"a", b"b", b"c", b"d"]
    assert exit_.committed == {0: 2}  # their offsets not committed


def test_after_commit_exits_on_the_first_commit_after_acknowledged_states() -> None:
    cp = Checkpoint("after_commit")
    (exit_,) = cp.run(_script(cp))
    assert exit_.step == "commit, states acknowledged"
    assert exit_.committed == {0: 3}  # committed first


@pytest.mark.parametrize(
    ("point", "failing", "failed"),
    [
        # the flush of the half fails, and then the checkpoint's own
        ("mid_changelog", "changelog.flush", ["send states", "flush changelog"]),
        ("after_flush", "sink.flush", ["flush forecasts"]),
        ("after_changelog", "changelog.flush", ["flush changelog"]),
        ("after_commit", "commit", ["commit"]),
    ],
)
def test_a_step_that_fails_raises_its_error_instead_of_exiting(
    point: CrashPoint, failing: str, failed: list[str]
) -> None:
    cp = Checkpoint(point)
    cp.broker.fail(failing)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("send states", lambda: cp.send("a", "b")),
        ("flush forecasts", lambda: cp.sink.flush(1.0)),
        ("flush changelog", lambda: cp.changelog.flush(1.0)),
        ("commit", lambda: cp.commit({0: 1}, 1.0)),
    ]
    assert cp.run(steps) == []
    assert cp.errors == failed


@pytest.mark.parametrize(
    ("point", "calls"),
    [
        ("mid_changelog", ["send states", "flush changelog"]),
        ("after_flush", ["send states", "flush forecasts"]),
        ("after_changelog", ["send states", "flush forecasts", "flush changelog"]),
        ("after_commit", ["send states", "flush forecasts", "flush changelog", "commit {0: 5}"]),
    ],
)
def test_in_the_periodic_checkpoint_each_point_fires_at_the_first_one_with_states(
    point: CrashPoint, calls: list[str]
) -> None:
    member = Member(1, crash_at=point)
    member.rebalance({0})
    member.apply_moves()
    member.offsets.processed({0: 5})
    checkpointer = member.checkpointer
    checkpointer.periodic()  # nothing to write
    checkpointer.periodic()  # completes an empty one: no point fires
    assert "send states" not in member.broker.calls
    member.touch(["a", "b"], 0)
    member.broker.calls.clear()
    with pytest.raises(Exited):
        checkpointer.periodic()  # completes the empty one, begins one with a and b
        checkpointer.periodic()  # completes that one
    steps = [c for c in member.broker.calls if c.split(" ")[0] in ("send", "flush", "commit")]
    assert steps[-len(calls) :] == calls
    assert steps[: -len(calls)] == ["flush forecasts", "flush changelog", "commit {0: 5}"]
