"""The checkpoint (`service.checkpoint.Checkpointer`) on the in-memory broker: its order on
every path, its failures, the pipelined periodic checkpoint and its slices, the adaptive
interval, the revoke and the final checkpoint."""

from __future__ import annotations

import time

import pytest

from service.errors import ChangelogError, CheckpointError
from tests.unit.service.memberkit import many, serving

TIMEOUT = 1.0


def test_the_final_checkpoint_runs_flush_then_changelog_then_commit() -> None:
    member = serving(0, 1)
    member.touch(["a"], 0)
    member.touch(["b", "gone"], 1)
    member.evict(["gone"])
    member.offsets.processed({0: 4, 1: 2})
    member.checkpointer.final(TIMEOUT)
    assert member.broker.calls == [
        "flush forecasts",
        "send states",
        "flush changelog",
        "commit {0: 4, 1: 2}",
    ]
    assert set(member.sent) == {("gone", 1, True), ("a", 0, False), ("b", 1, False)}
    assert member.sent[0][0] == "gone"  # tombstones before states
    assert member.dirty == set()
    assert member.checkpointer.tombstones == {}


def test_a_failed_changelog_write_skips_the_commit_and_keeps_streams_changed() -> None:
    member = serving(0)
    member.touch(["a", "b"], 0)
    member.producer.fail_every = 1
    with pytest.raises(CheckpointError) as failed:
        member.checkpointer.final(TIMEOUT)
    assert isinstance(failed.value.__cause__, ChangelogError)
    assert not any(c.startswith("commit") for c in member.broker.calls)
    assert member.dirty == {"a", "b"}
    member.producer.fail_every = 0
    member.broker.calls.clear()
    member.checkpointer.final(TIMEOUT)
    assert member.broker.calls[-1].startswith("commit")
    assert member.dirty == set()


def test_after_a_failed_final_checkpoint_the_revoke_while_leaving_waits_for_nothing() -> None:
    member = serving(0)
    member.touch(["a"], 0)
    member.offsets.processed({0: 5})
    member.broker.fail("sink.flush")
    with pytest.raises(CheckpointError):
        member.checkpointer.final(TIMEOUT)
    member.broker.calls.clear()
    assert member.checkpointer.revoke({0}) == {}
    assert member.broker.calls == []


def test_the_periodic_checkpoint_commits_what_the_changelog_acknowledged_one_step_later() -> None:
    member = serving(0, 1)
    calls = member.broker.calls
    member.touch(["a"], 0)
    member.offsets.processed({0: 10})
    member.checkpointer.periodic()
    # begun: the states are on their way, nothing waited for, nothing committed
    assert calls == ["send states"]
    assert member.dirty == set()
    # more is processed while they travel
    member.touch(["b"], 1)
    member.offsets.processed({1: 4})
    calls.clear()
    member.checkpointer.periodic()
    # completed: forecasts and changelog acknowledged, then the positions taken with the
    # states sent; the next one begun with b's state
    assert calls == ["flush forecasts", "flush changelog", "commit {0: 10}", "send states"]
    assert member.sent_keys == ["a", "b"]
    calls.clear()
    member.checkpointer.periodic()
    assert calls == ["flush forecasts", "flush changelog", "commit {0: 10, 1: 4}"]


def test_a_pipelined_checkpoint_that_fails_commits_nothing_and_writes_its_states_again() -> None:
    member = serving(0)
    calls = member.broker.calls
    member.touch(["a", "b", "gone"], 0)
    member.evict(["gone"])
    member.offsets.processed({0: 7})
    member.producer.fail_every = 1
    member.checkpointer.periodic()
    assert member.checkpointer.tombstones == {}  # sent
    with pytest.raises(CheckpointError) as failed:
        member.checkpointer.periodic()
    assert isinstance(failed.value.__cause__, ChangelogError)
    assert not any(c.startswith("commit") for c in calls)
    assert member.dirty == {"a", "b"}
    assert member.checkpointer.tombstones == {"gone": 0}
    member.producer.fail_every = 0
    calls.clear()
    member.checkpointer.periodic()  # waits for the producers, then begins again from scratch
    member.checkpointer.periodic()
    assert calls == [
        "flush forecasts",
        "flush changelog",
        "send states",
        "flush forecasts",
        "flush changelog",
        "commit {0: 7}",
    ]
    assert member.sent_keys.count("gone") == 2


def test_a_revoke_takes_its_partitions_out_of_the_pending_checkpoint() -> None:
    member = serving(0, 1)
    calls = member.broker.calls
    member.touch(["a"], 0)
    member.touch(["b"], 1)
    member.offsets.processed({0: 3, 1: 5})
    member.checkpointer.periodic()
    calls.clear()
    assert member.revoke({1}) == {1: 5}
    assert calls == ["flush forecasts", "flush changelog", "commit {1: 5}"]
    # partition 1 comes back and is processed further before the pending checkpoint completes
    member.partitions_assigned({0, 1})
    member.apply_moves()
    member.offsets.processed({1: 8})
    calls.clear()
    member.checkpointer.periodic()
    # partition 1's offset in it was the revoke's to commit
    assert calls == ["flush forecasts", "flush changelog", "commit {0: 3}"]


def test_the_final_checkpoint_completes_a_pending_one() -> None:
    member = serving(0)
    calls = member.broker.calls
    member.touch(["a"], 0)
    member.checkpointer.periodic()
    member.touch(["b"], 0)
    member.offsets.processed({0: 2})
    calls.clear()
    member.checkpointer.final(TIMEOUT)
    assert calls == ["flush forecasts", "send states", "flush changelog", "commit {0: 2}"]
    assert member.sent_keys == ["a", "b"]
    assert member.metric("sensorcast_changelog_records_total", kind="state") == 2
    # nothing is left pending: the next periodic checkpoint has nothing to complete
    calls.clear()
    member.checkpointer.periodic()
    assert calls == []


def test_a_begun_checkpoint_sends_its_states_a_slice_at_a_time_and_commits_after_all() -> None:
    member = serving(0, 1)
    calls = member.broker.calls
    ids = many("s", 600)
    member.touch(ids[:300], 0)
    member.touch(ids[300:], 1)
    member.offsets.processed({0: 300, 1: 300})
    member.checkpointer.periodic()
    # the first slice now; all 600 states were taken (and marked unchanged) at once
    assert len(member.sent) == 64
    assert member.checkpointer.writing
    assert member.dirty == set()
    # a stream changed meanwhile is the next checkpoint's
    member.touch(["late"], 0)
    member.checkpointer.send_slice()  # the loop, between micro-batches
    assert len(member.sent) == 128
    calls.clear()
    member.checkpointer.periodic()
    # the rest is sent before the flushes, and the commit comes after all of it
    assert calls == [
        "send states",
        "flush forecasts",
        "flush changelog",
        "commit {0: 300, 1: 300}",
        "send states",
    ]
    assert sorted(member.sent_keys[:600]) == ids
    assert member.sent_keys[600:] == ["late"]
    assert not member.checkpointer.writing


@pytest.mark.parametrize(
    "write",
    [
        "revoke",
        "final",
    ],
)
def test_any_other_changelog_write_sends_the_queued_states_first(write: str) -> None:
    member = serving(0)
    ids = many("s", 600)
    member.touch(ids, 0)
    member.offsets.processed({0: 600})
    member.checkpointer.periodic()
    assert len(member.sent) == 64
    # a stream changes again before its queued state was sent: the newer state written now
    # must come after the queued older one
    late = next(s for s in reversed(ids) if s not in set(member.sent_keys))
    member.touch([late], 0)
    if write == "revoke":
        assert member.checkpointer.revoke({0}) == {0: 600}
    else:
        member.checkpointer.final(TIMEOUT)
    keys = member.sent_keys
    assert keys.count(late) == 2 and keys[-1] == late
    assert sorted(set(keys)) == ids
    assert len(keys) == 601
    assert not member.checkpointer.writing


def test_a_failed_slice_abandons_the_checkpoint_and_marks_its_states_changed() -> None:
    member = serving(0)
    calls = member.broker.calls
    ids = many("s", 600)
    member.touch(ids, 0)
    member.offsets.processed({0: 600})
    member.checkpointer.periodic()
    member.producer.refuse = True
    began = time.monotonic()
    with pytest.raises(CheckpointError) as failed:
        member.checkpointer.send_slice()
    assert isinstance(failed.value.__cause__, ChangelogError)
    assert failed.value.retry_in == 0.5
    assert member.checkpointer.due_at <= time.monotonic() + 0.5
    assert member.checkpointer.due_at >= began + 0.5
    assert not member.checkpointer.writing
    assert member.dirty == set(ids)
    assert not any(c.startswith("commit") for c in calls)
    assert member.metric("sensorcast_checkpoints_total", outcome="failed") == 1
    # abandoned: the next checkpoint waits for the producers, completes nothing, and
    # begins again with every state
    member.producer.refuse = False
    calls.clear()
    member.checkpointer.periodic()
    assert calls == ["flush forecasts", "flush changelog", "send states"]


def test_a_revoke_drops_queued_states_of_its_partitions_when_its_checkpoint_failed() -> None:
    member = serving(0, 1)
    member.touch(many("a", 300), 0)
    member.touch(many("b", 300), 1)
    member.offsets.processed({0: 300, 1: 300})
    member.checkpointer.periodic()
    member.producer.refuse = True
    assert member.revoke({1}) == {}  # nothing for the client to commit
    member.producer.refuse = False
    sent_before = len(member.sent)
    member.send_all_slices()
    later = [part for _, part, _ in member.sent[sent_before:]]
    assert later and set(later) == {0}  # nothing more of partition 1 after it left
    assert not member.checkpointer.writing


def test_retries_of_a_failed_checkpoint_send_no_states_until_the_broker_takes_the_last_ones() -> (
    None
):
    member = serving(0)
    ids = many("s", 300)
    member.touch(ids, 0)
    member.checkpointer.periodic()  # begun: the states are with the producer
    member.send_all_slices()
    member.producer.flush_times_out = True  # the broker is gone
    retries = []
    for _ in range(4):
        with pytest.raises(CheckpointError) as failed:
            member.checkpointer.periodic()
        retries.append(failed.value.retry_in)
        member.send_all_slices()
    # each retry waited for the producer instead of queueing the 300 states again
    assert len(member.sent) == 300
    assert member.dirty == set(ids)
    assert retries == [0.5, 1.0, 2.0, 4.0]
    member.producer.flush_times_out = False  # back
    member.checkpointer.periodic()
    member.send_all_slices()
    member.checkpointer.periodic()
    assert len(member.sent) == 600
    assert member.broker.calls[-1] == "commit {}"
    assert member.dirty == set()
    assert member.checkpointer.backoff == 0.5


def test_a_checkpoint_whose_first_send_is_refused_queues_nothing() -> None:
    member = serving(0)
    ids = many("s", 600)
    member.touch(ids, 0)
    member.offsets.processed({0: 600})
    member.producer.refuse = True
    with pytest.raises(CheckpointError):
        member.checkpointer.periodic()
    assert not member.checkpointer.writing
    assert member.sent == []
    assert member.dirty == set(ids)
    assert member.metric("sensorcast_checkpoints_total", outcome="failed") == 1
    # nothing was begun: the next checkpoint has nothing to complete and commit
    member.producer.refuse = False
    member.broker.calls.clear()
    member.checkpointer.periodic()
    assert member.broker.calls == ["flush forecasts", "flush changelog", "send states"]


def test_a_checkpoint_whose_state_writes_would_overrun_the_budget_puts_the_next_one_off() -> None:
    member = serving(0, commit_interval=0.05, changelog_budget=0.05)
    member.producer.delay = 0.0005  # 600 sends take the loop at least 0.3 s
    intervals = []
    for _ in range(4):
        member.touch(many("s", 600), 0)
        sent = len(member.sent)
        written = member.metric("sensorcast_changelog_write_seconds_total") or 0.0
        member.checkpointer.periodic()
        # begun with its first slice of 64: the other 536 will take as long each, so the
        # next checkpoint should wait 20 times what all of them take (at least 6 s), and
        # waits at most four times the last interval
        assert len(member.sent) - sent == 64
        interval = member.metric("sensorcast_checkpoint_interval_seconds")
        assert interval is not None
        intervals.append(interval)
        assert member.checkpointer.due_at - time.monotonic() > interval - 0.05
        member.send_all_slices()
        cost = (member.metric("sensorcast_changelog_write_seconds_total") or 0.0) - written
        assert cost >= 0.3
    assert intervals[:3] == [0.2, 0.8, 3.2]
    assert 6.0 <= intervals[3] <= 12.8  # 20 times the cost, or four times 3.2
    # a cheap checkpoint brings the interval back at once
    member.producer.delay = 0.0
    member.touch(["a"], 0)
    member.checkpointer.periodic()
    assert member.metric("sensorcast_checkpoint_interval_seconds") == 0.05


@pytest.mark.parametrize(("cap", "expected"), [(0.2, 0.2), (0.01, 0.05)])
def test_the_stretched_interval_stops_at_its_cap_and_never_falls_below_the_interval(
    cap: float, expected: float
) -> None:
    member = serving(0, commit_interval=0.05, commit_interval_max=cap)
    member.producer.delay = 0.0005
    cost = 0.0
    for _ in range(2):  # growing fourfold from 0.05, past both caps
        member.touch(many("s", 300), 0)
        written = member.metric("sensorcast_changelog_write_seconds_total") or 0.0
        member.checkpointer.periodic()
        member.send_all_slices()
        cost = (member.metric("sensorcast_changelog_write_seconds_total") or 0.0) - written
    assert cost >= 0.15  # 1.5 s at the default budget of 10%
    assert member.metric("sensorcast_checkpoint_interval_seconds") == expected


def test_a_large_checkpoint_is_sent_in_slices_of_at_most_1024_states() -> None:
    member = serving(0)
    member.touch(many("s", 20_000), 0)  # a sixteenth would be 1,250
    member.checkpointer.periodic()
    assert len(member.sent) == 1024
    member.checkpointer.send_slice()
    assert len(member.sent) == 2048
    member.send_all_slices()
    assert len(member.sent) == 20_000
