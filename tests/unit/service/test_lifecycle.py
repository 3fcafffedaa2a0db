"""The input partitions' lifecycle (`service.lifecycle.PartitionLifecycle`) on the in-memory
broker, rebalances run by the memory source's poll: the restore of newly assigned partitions
before they are fetched, the pause while checkpoints fail, partitions kept through an eager
rebalance, a revoke before the restore ran, and lost partitions."""

from __future__ import annotations

from tests.unit.service.memberkit import Member, serving


def test_assigned_partitions_are_paused_until_restored_then_resumed() -> None:
    member = Member(3)
    broker = member.broker
    broker.changelog[0] = member.changelog_records(["a", "b"], 5)
    broker.changelog[1] = member.changelog_records(["c"], 7)
    for p in range(3):
        broker.produce(p, b"k", b"reading")
    # the first poll: the whole topic assigned, nothing fetched before the restore
    assert len(member.source.poll()) == 0
    assert member.source.paused() == {0, 1, 2}
    assert member.readiness.snapshot()["state_restored"] is False
    assert broker.calls == ["assigned [0, 1, 2]"]
    member.apply_moves()  # the loop, after the poll
    assert broker.calls[1:] == ["restore [0, 1, 2]"]
    assert member.source.paused() == set()
    assert member.readiness.snapshot()["state_restored"] is True
    assert sorted(member.source.poll().partitions) == [0, 1, 2]
    store = member.engine.store
    assert sorted(store.ids()) == ["a", "b", "c"]
    info = store.info("c")
    assert info is not None and info.applied_offset == 7 and info.last_ts == 100.0
    assert store.dirty_ids() == set()
    assert member.lifecycle.partitions_of(["a", "c", "x"]) == [0, 1, -1]
    assert member.metric("sensorcast_restored_streams", partition="0") == 2


def test_a_failed_restore_keeps_the_partitions_paused_and_not_ready() -> None:
    member = Member(2)
    member.broker.fail("restore")
    member.source.poll()
    member.apply_moves()
    assert member.broker.calls == ["assigned [0, 1]", "restore [0, 1]"]
    assert member.source.paused() == {0, 1}
    assert member.readiness.snapshot()["state_restored"] is False
    member.apply_moves()  # retried after a backoff, not at once
    assert member.broker.calls[2:] == []


def test_consumption_pauses_while_checkpoints_fail_except_for_partitions_still_restoring() -> None:
    member = serving(0, 1, count=4)
    source, lifecycle = member.source, member.lifecycle
    lifecycle.pause(True)
    assert source.paused() == {0, 1}
    # an eager rebalance meanwhile: the client unpauses what it assigns, the lifecycle
    # pauses the new partition for its restore, and the loop the whole assignment again
    member.rebalance({0, 1, 2})
    assert source.paused() == {2}
    member.apply_moves()
    assert member.broker.calls[-1] == "restore [2]"
    assert source.paused() == {0, 1, 2}  # restored, but still paused with the rest
    lifecycle.pause(False)
    assert source.paused() == set()
    # a partition whose restore has not run stays paused when consumption resumes
    lifecycle.pause(True)
    member.broker.fail("restore")
    member.rebalance({0, 1, 2, 3})
    member.apply_moves()
    assert source.paused() == {0, 1, 2, 3}
    assert member.readiness.snapshot()["state_restored"] is False
    lifecycle.pause(False)
    assert source.paused() == {3}


def test_eager_rebalance_keeps_retained_partitions_and_writes_only_revoked_ones() -> None:
    member = serving(0, 1)
    calls = member.broker.calls
    member.touch(["a"], 0)
    member.touch(["b"], 1)
    member.offsets.processed({0: 3, 1: 4})
    # a revoke checkpoint for partition 0 only writes partition 0's streams
    assert member.checkpointer.revoke({0}) == {0: 3}
    assert member.sent == [("a", 0, False)]
    assert member.dirty == {"b"}
    # eager: everything is revoked (and checkpointed), then partition 1 comes back
    calls.clear()
    member.rebalance({1})
    assert calls == [
        "revoked [0, 1]",
        "flush forecasts",
        "send states",
        "flush changelog",
        "commit {0: 3, 1: 4}",
        "assigned [1]",
    ]
    assert member.source.paused() == set()  # kept: no restore
    assert member.apply_moves() == {0}
    assert not any(c.startswith("restore") for c in calls)
    assert member.engine.store.ids() == ["b"]
    assert member.lifecycle.holds(1) and not member.lifecycle.holds(0)


def test_a_partition_revoked_before_its_restore_is_restored_when_it_returns() -> None:
    member = Member(3)
    member.broker.changelog[2] = member.changelog_records(["z"], 3)
    member.broker.assign({2})
    member.broker.assign({2})  # revoked again before the loop ran the restore
    member.source.poll()
    assert member.broker.calls == [
        "assigned [2]",
        "revoked [2]",
        "flush forecasts",  # nothing of its own in memory to write
        "flush changelog",
        "assigned [2]",
    ]
    assert member.source.paused() == {2}
    member.apply_moves()
    assert member.broker.calls[5:] == ["restore [2]"]
    assert member.engine.store.ids() == ["z"]
    assert member.source.paused() == set()


def test_a_revoke_before_the_restore_writes_nothing_of_the_partitions_old_streams() -> None:
    member = serving(0, 1)
    member.touch(["a"], 0)
    member.touch(["x"], 1)
    # all in one poll, before the loop dropped or restored anything
    member.broker.lose({1})  # x's partition lost: its new owner may write x now
    member.broker.assign({0, 1})  # back, waiting for its restore
    member.broker.assign({0})  # and revoked again
    member.source.poll()
    assert member.sent == [("a", 0, False)]  # x's stale state is not written
    member.apply_moves()
    assert member.engine.store.ids() == ["a"]


def test_lost_partitions_are_dropped_without_writing() -> None:
    member = serving(0, 1)
    member.touch(["a", "old"], 0)
    member.touch(["b"], 1)
    member.evict(["old"])
    member.offsets.processed({0: 2, 1: 2})
    member.lose({0})
    assert member.broker.calls == ["lost [0]"]
    member.apply_moves()
    assert member.engine.store.ids() == ["b"]
    assert member.checkpointer.tombstones == {}  # the new owner's to write
    member.checkpointer.final(1.0)
    assert member.sent == [("b", 1, False)]
    assert member.broker.calls[-1] == "commit {1: 2}"
