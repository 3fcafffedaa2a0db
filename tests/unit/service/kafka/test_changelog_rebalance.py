"""How the service uses the changelog, driven through its rebalance callbacks and its
checkpoint with stand-in clients (no broker): the checkpoint's order and failures, the
restore of newly assigned partitions before they are fetched, partitions kept through an
eager rebalance, a revoke before the restore ran, and lost partitions."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from kafka.errors import KafkaTimeoutError

from service.app import Service
from service.config import load_settings
from service.core.engine import StreamEngine
from service.core.model import OnnxStepModel
from service.errors import ChangelogError
from service.kafka.changelog import ChangelogReader, ChangelogWriter
from service.testing import build_onnx_lstm
from tests.unit.service.kafka.test_changelog import FakeConsumer, FakeProducer, _Record

TOPIC = "readings"


class Calls(list[str]):
    pass


class FakeSource:
    def __init__(self, calls: Calls) -> None:
        self.owned: set[int] = set()
        self.paused_set: set[int] = set()
        self.processed: dict[int, int] = {}  # partition -> next offset to process
        self.calls = calls

    def assignment(self) -> set[int]:
        return set(self.owned)

    def pause(self, partitions: Iterable[int]) -> None:
        self.paused_set |= set(partitions)

    def resume(self, partitions: Iterable[int]) -> None:
        self.paused_set -= set(partitions)

    def paused(self) -> set[int]:
        return set(self.paused_set)

    def positions(self) -> dict[int, int]:
        return dict(self.processed)

    def commit(
        self, timeout_ms: int | None = None, offsets: dict[int, int] | None = None
    ) -> dict[int, int]:
        self.calls.append("commit" if offsets is None else f"commit {offsets}")
        return {}

    def lag(self) -> dict[int, int]:
        return {}


class FakeSink:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def flush(self, timeout: float) -> None:
        self.calls.append("flush forecasts")


class RecordingProducer(FakeProducer):
    def __init__(self, calls: Calls) -> None:
        super().__init__()
        self.calls = calls
        self.refuse = False  # raise from send, as kafka-python does when its buffer stays full
        self.delay = 0.0  # seconds each send takes

    def send(self, topic: str, *, key: bytes, value: bytes | None, partition: int) -> Any:
        if self.refuse:
            raise KafkaTimeoutError("buffer full")
        if self.delay:
            time.sleep(self.delay)
        if not self.calls or self.calls[-1] != "send states":
            self.calls.append("send states")
        return super().send(topic, key=key, value=value, partition=partition)

    def flush(self, timeout: float) -> None:
        self.calls.append("flush changelog")
        super().flush(timeout)


def _service(
    logs: dict[int, list[_Record]], **overrides: object
) -> tuple[Service, Calls, RecordingProducer]:
    settings = load_settings(None, {"http.enabled": False, "kafka.input_topic": TOPIC, **overrides})
    svc = Service(settings)
    card, proto, _ = build_onnx_lstm(hidden=4, features=("temp", "load"))
    svc._engine = StreamEngine(OnnxStepModel(card, proto.SerializeToString()))
    calls = Calls()
    producer = RecordingProducer(calls)
    svc._source = FakeSource(calls)  # type: ignore[assignment]
    svc._sink = FakeSink(calls)  # type: ignore[assignment]
    svc._changelog = ChangelogWriter(settings.kafka, producer=producer)
    svc._restorer = ChangelogReader(settings.kafka, consumer=FakeConsumer(logs))
    return svc, calls, producer


def _records(svc: Service, ids: list[str], applied: int) -> list[_Record]:
    """Changelog records of `ids`, made by another store."""
    assert svc.engine is not None
    other = StreamEngine(svc.engine.model).store
    slots = other.ensure(ids)
    states = [np.full(s.batched_shape(len(ids)), 0.25, np.float32) for s in other.specs]
    other.scatter(slots, states)
    other.advance(slots, np.full(len(ids), 100.0), np.full(len(ids), applied), now=0.0)
    return [_Record(s.encode(), b) for s, b in zip(ids, other.dump_many(ids), strict=True)]


def _assign(svc: Service, owned: set[int]) -> None:
    source: Any = svc._source
    source.owned = set(owned)
    svc.partitions_assigned(owned)


def _serving(*partitions: int, **overrides: object) -> tuple[Service, Calls, RecordingProducer]:
    """A service holding `partitions` (empty changelogs), restored and running, with
    settings `overrides` (dotted names)."""
    svc, calls, producer = _service({p: [] for p in partitions}, **overrides)
    _assign(svc, set(partitions))
    svc._apply_moves()
    return svc, calls, producer


def _send_all_slices(svc: Service) -> None:
    """The loop's iterations until the begun checkpoint's records are all sent."""
    while svc._queued is not None:
        svc._send_queued_slice()


def _paused(svc: Service) -> set[int]:
    source: Any = svc._source
    return set(source.paused_set)


def _touch(svc: Service, ids: list[str], partition: int) -> None:
    """Readings of `ids` applied on `partition` (the store marks them changed)."""
    assert svc.engine is not None
    store = svc.engine.store
    slots = store.ensure(ids)
    store.advance(slots, np.full(len(ids), 200.0), np.full(len(ids), 9), now=0.0)
    svc._streams.note_restored(ids, partition)


def test_assigned_partitions_are_paused_until_restored_then_resumed() -> None:
    svc, _, _ = _service({})
    svc._restorer = ChangelogReader(
        svc.settings.kafka,
        consumer=FakeConsumer({0: _records(svc, ["a", "b"], 5), 1: _records(svc, ["c"], 7), 2: []}),
    )
    _assign(svc, {0, 1, 2})
    assert _paused(svc) == {0, 1, 2}
    assert svc.readiness.snapshot()["state_restored"] is False
    svc._apply_moves()  # the loop, after the poll
    assert _paused(svc) == set()
    assert svc.readiness.snapshot()["state_restored"] is True
    store = svc.engine.store  # type: ignore[union-attr]
    assert sorted(store.ids()) == ["a", "b", "c"]
    info = store.info("c")
    assert info is not None and info.applied_offset == 7 and info.last_ts == 100.0
    assert store.dirty_ids() == set()
    assert svc._streams.partitions_of(["a", "c"]) == [0, 1]
    assert (
        svc.metrics.registry.get_sample_value("sensorcast_restored_streams", {"partition": "0"})
        == 2
    )


def test_checkpoint_runs_flush_then_changelog_then_commit() -> None:
    svc, calls, producer = _serving(0, 1)
    _touch(svc, ["a"], 0)
    _touch(svc, ["b"], 1)
    svc._tombstones["gone"] = 1
    svc.checkpoint()
    assert calls == ["flush forecasts", "send states", "flush changelog", "commit"]
    sent = {(key, value is None, part) for _, key, value, part in producer.sent}
    assert sent == {(b"gone", True, 1), (b"a", False, 0), (b"b", False, 1)}
    assert producer.sent[0][1] == b"gone"  # tombstones before states
    assert svc.engine.store.dirty_ids() == set()  # type: ignore[union-attr]
    assert svc._tombstones == {}


def test_a_failed_changelog_write_skips_the_commit_and_keeps_streams_changed() -> None:
    svc, calls, producer = _serving(0)
    _touch(svc, ["a", "b"], 0)
    producer.fail_every = 1
    with pytest.raises(ChangelogError):
        svc.checkpoint()
    assert "commit" not in calls
    assert svc.engine.store.dirty_ids() == {"a", "b"}  # type: ignore[union-attr]
    producer.fail_every = 0
    calls.clear()
    svc.checkpoint()
    assert calls[-1] == "commit"
    assert svc.engine.store.dirty_ids() == set()  # type: ignore[union-attr]


def _processed(svc: Service, positions: dict[int, int]) -> None:
    source: Any = svc._source
    source.processed = dict(positions)


def test_the_periodic_checkpoint_commits_what_the_changelog_acknowledged_one_step_later() -> None:
    svc, calls, producer = _serving(0, 1)
    _touch(svc, ["a"], 0)
    _processed(svc, {0: 10})
    svc._checkpoint_step(1.0)
    # begun: the states are on their way, nothing waited for, nothing committed
    assert calls == ["send states"]
    assert svc.engine.store.dirty_ids() == set()  # type: ignore[union-attr]
    # more is processed while they travel
    _touch(svc, ["b"], 1)
    _processed(svc, {0: 10, 1: 4})
    calls.clear()
    svc._checkpoint_step(1.0)
    # completed: forecasts and changelog acknowledged, then the positions taken with the
    # states sent; the next one begun with b's state
    assert calls == ["flush forecasts", "flush changelog", "commit {0: 10}", "send states"]
    assert [key for _, key, _, _ in producer.sent] == [b"a", b"b"]
    calls.clear()
    svc._checkpoint_step(1.0)
    assert calls == ["flush forecasts", "flush changelog", "commit {0: 10, 1: 4}"]


def test_a_pipelined_checkpoint_that_fails_commits_nothing_and_writes_its_states_again() -> None:
    svc, calls, producer = _serving(0)
    _touch(svc, ["a", "b"], 0)
    svc._tombstones["gone"] = 0
    _processed(svc, {0: 7})
    producer.fail_every = 1
    svc._checkpoint_step(1.0)
    with pytest.raises(ChangelogError):
        svc._checkpoint_step(1.0)
    assert not any(c.startswith("commit") for c in calls)
    assert svc.engine.store.dirty_ids() == {"a", "b"}  # type: ignore[union-attr]
    assert svc._tombstones == {"gone": 0}
    producer.fail_every = 0
    calls.clear()
    svc._checkpoint_step(1.0)  # begins again from scratch
    svc._checkpoint_step(1.0)
    assert calls == ["send states", "flush forecasts", "flush changelog", "commit {0: 7}"]


def test_a_revoke_takes_its_partitions_out_of_the_pending_checkpoint() -> None:
    svc, calls, _ = _serving(0, 1)
    _touch(svc, ["a"], 0)
    _touch(svc, ["b"], 1)
    _processed(svc, {0: 3, 1: 5})
    svc._checkpoint_step(1.0)
    assert svc.flush_before_revoke({1})
    svc.partitions_revoked({1}, lost=False)
    calls.clear()
    svc._checkpoint_step(1.0)
    assert "commit {0: 3}" in calls  # partition 1's offset was the revoke's to commit


def test_the_shutdown_checkpoint_completes_a_pending_one() -> None:
    svc, calls, producer = _serving(0)
    _touch(svc, ["a"], 0)
    svc._checkpoint_step(1.0)
    _touch(svc, ["b"], 0)
    calls.clear()
    svc.checkpoint()
    assert calls == ["flush forecasts", "send states", "flush changelog", "commit"]
    assert svc._pending is None
    assert [key for _, key, _, _ in producer.sent] == [b"a", b"b"]
    changelog_states = svc.metrics.registry.get_sample_value(
        "sensorcast_changelog_records_total", {"kind": "state"}
    )
    assert changelog_states == 2


def test_eager_rebalance_keeps_retained_partitions_and_writes_only_revoked_ones() -> None:
    svc, _calls, producer = _serving(0, 1)
    _touch(svc, ["a"], 0)
    _touch(svc, ["b"], 1)
    # a revoke checkpoint for partition 0 only writes partition 0's streams
    assert svc.flush_before_revoke({0})
    assert [(key, part) for _, key, _, part in producer.sent] == [(b"a", 0)]
    assert svc.engine.store.dirty_ids() == {"b"}  # type: ignore[union-attr]
    # eager: everything is revoked, then partition 1 comes back
    svc.partitions_revoked({0, 1}, lost=False)
    _assign(svc, {1})
    assert _paused(svc) == set()  # kept: no restore
    svc._apply_moves()
    assert svc.engine.store.ids() == ["b"]  # type: ignore[union-attr]


def test_a_partition_revoked_before_its_restore_is_restored_when_it_returns() -> None:
    svc, _, _ = _service({})
    svc._restorer = ChangelogReader(
        svc.settings.kafka, consumer=FakeConsumer({2: _records(svc, ["z"], 3)})
    )
    _assign(svc, {2})
    svc.partitions_revoked({2}, lost=False)  # before the loop ran the restore
    _assign(svc, {2})
    assert _paused(svc) == {2}
    svc._apply_moves()
    assert svc.engine.store.ids() == ["z"]  # type: ignore[union-attr]


def test_lost_partitions_are_dropped_without_writing() -> None:
    svc, _calls, producer = _serving(0, 1)
    _touch(svc, ["a"], 0)
    _touch(svc, ["b"], 1)
    svc._tombstones["old"] = 0
    svc.partitions_revoked({0}, lost=True)
    svc._apply_moves()
    assert svc.engine.store.ids() == ["b"]  # type: ignore[union-attr]
    svc.checkpoint()
    assert [(key, part) for _, key, _, part in producer.sent] == [(b"b", 1)]


def _many(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def test_a_begun_checkpoint_sends_its_states_a_slice_at_a_time_and_commits_after_all() -> None:
    svc, calls, producer = _serving(0, 1)
    ids = _many("s", 600)
    _touch(svc, ids[:300], 0)
    _touch(svc, ids[300:], 1)
    _processed(svc, {0: 300, 1: 300})
    svc._checkpoint_step(1.0)
    # the first slice now; all 600 states were taken (and marked unchanged) at once
    assert len(producer.sent) == 256
    assert svc.engine.store.dirty_ids() == set()  # type: ignore[union-attr]
    # a stream changed meanwhile is the next checkpoint's
    _touch(svc, ["late"], 0)
    svc._send_queued_slice()  # the loop, between micro-batches
    assert len(producer.sent) == 512
    calls.clear()
    svc._checkpoint_step(1.0)
    # the rest is sent before the flushes, and the commit comes after all of it
    assert calls[:4] == [
        "send states",
        "flush forecasts",
        "flush changelog",
        "commit {0: 300, 1: 300}",
    ]
    sent_keys = [key.decode() for _, key, _, _ in producer.sent]
    assert sorted(sent_keys[:600]) == sorted(ids)
    assert sent_keys[600:] == ["late"]
    assert svc._queued is None


def test_any_other_changelog_write_sends_the_queued_states_first() -> None:
    svc, _calls, producer = _serving(0, 1)
    ids = _many("s", 600)
    _touch(svc, ids, 0)
    svc._checkpoint_step(1.0)
    assert len(producer.sent) == 256
    # the stream changes again before its queued state was sent: the revoke's newer state
    # must come after the queued older one
    assert svc._queued is not None
    last = svc._queued.keys[-1]
    _touch(svc, [last], 0)
    assert svc.flush_before_revoke({0})
    keys = [key.decode() for _, key, _, _ in producer.sent]
    assert keys.count(last) == 2 and keys[-1] == last
    assert len(keys) == 601
    assert svc._queued is None


def test_a_failed_slice_abandons_the_checkpoint_and_marks_its_states_changed() -> None:
    svc, calls, producer = _serving(0)
    ids = _many("s", 600)
    _touch(svc, ids, 0)
    _processed(svc, {0: 600})
    svc._checkpoint_step(1.0)
    producer.refuse = True
    svc._send_queued_slice()
    assert svc._pending is None and svc._queued is None
    assert svc.engine.store.dirty_ids() == set(ids)  # type: ignore[union-attr]
    assert not any(c.startswith("commit") for c in calls)
    failed = svc.metrics.registry.get_sample_value(
        "sensorcast_checkpoints_total", {"outcome": "failed"}
    )
    assert failed == 1


def test_a_revoke_drops_queued_states_of_its_partitions_when_its_checkpoint_failed() -> None:
    svc, _calls, producer = _serving(0, 1)
    _touch(svc, _many("a", 300), 0)
    _touch(svc, _many("b", 300), 1)
    svc._checkpoint_step(1.0)
    producer.refuse = True
    assert not svc.flush_before_revoke({1})
    producer.refuse = False
    svc.partitions_revoked({1}, lost=False)
    sent_before = len(producer.sent)
    _send_all_slices(svc)
    later = [part for _, _, _, part in producer.sent[sent_before:]]
    assert later and set(later) == {0}  # nothing more of partition 1 after it left
    assert svc._queued is None


def test_retries_of_a_failed_checkpoint_send_no_states_until_the_broker_takes_the_last_ones() -> (
    None
):
    svc, calls, producer = _serving(0)
    ids = _many("s", 300)
    _touch(svc, ids, 0)
    svc._periodic_checkpoint()  # begun: the states are with the producer
    _send_all_slices(svc)
    producer.flush_times_out = True  # the broker is gone
    for _ in range(4):
        svc._periodic_checkpoint()
        _send_all_slices(svc)
    # each retry waited for the producer instead of queueing the 300 states again
    assert len(producer.sent) == 300
    assert svc.engine.store.dirty_ids() == set(ids)  # type: ignore[union-attr]
    producer.flush_times_out = False  # back
    svc._periodic_checkpoint()
    _send_all_slices(svc)
    svc._periodic_checkpoint()
    assert len(producer.sent) == 600
    assert calls[-1] == "commit {}"
    assert svc.engine.store.dirty_ids() == set()  # type: ignore[union-attr]


def test_a_checkpoint_whose_first_send_is_refused_queues_nothing() -> None:
    svc, _calls, producer = _serving(0)
    ids = _many("s", 600)
    _touch(svc, ids, 0)
    producer.refuse = True
    svc._periodic_checkpoint()
    assert svc._queued is None and svc._pending is None
    assert svc.engine.store.dirty_ids() == set(ids)  # type: ignore[union-attr]
    failed = svc.metrics.registry.get_sample_value(
        "sensorcast_checkpoints_total", {"outcome": "failed"}
    )
    assert failed == 1


def _interval(svc: Service) -> float | None:
    return svc.metrics.registry.get_sample_value("sensorcast_checkpoint_interval_seconds")


def test_a_checkpoint_whose_state_writes_would_overrun_the_budget_puts_the_next_one_off() -> None:
    settings = {"kafka.commit_interval": 0.05, "kafka.changelog_budget": 0.05}
    svc, _calls, producer = _serving(0, **settings)
    producer.delay = 0.0005  # 600 sends take the loop at least 0.3 s
    intervals = []
    for _ in range(4):
        _touch(svc, _many("s", 600), 0)
        sent = len(producer.sent)
        svc._periodic_checkpoint()
        # begun with its first slice of 256: the other 344 will take as long each, so the
        # next checkpoint should wait 20 times what all of them take (at least 6 s), and
        # waits at most four times the last interval
        assert len(producer.sent) - sent == 256
        cost = svc._write_cost
        assert cost >= 0.3
        intervals.append(_interval(svc))
        assert svc._next_checkpoint - time.monotonic() > intervals[-1] - 0.05
        _send_all_slices(svc)
    assert intervals[:3] == [0.2, 0.8, 3.2]
    assert intervals[3] == pytest.approx(min(12.8, cost / 0.05))
    total = svc.metrics.registry.get_sample_value("sensorcast_changelog_write_seconds_total")
    assert total is not None and total >= 4 * 0.3
    # a cheap checkpoint brings the interval back at once
    producer.delay = 0.0
    _touch(svc, ["a"], 0)
    svc._periodic_checkpoint()
    assert _interval(svc) == 0.05


@pytest.mark.parametrize(("cap", "expected"), [(0.2, 0.2), (0.01, 0.05)])
def test_the_stretched_interval_stops_at_its_cap_and_never_falls_below_the_interval(
    cap: float, expected: float
) -> None:
    settings = {"kafka.commit_interval": 0.05, "kafka.commit_interval_max": cap}
    svc, _calls, producer = _serving(0, **settings)
    producer.delay = 0.0005
    for _ in range(2):  # growing fourfold from 0.05, past both caps
        _touch(svc, _many("s", 300), 0)
        svc._periodic_checkpoint()
        _send_all_slices(svc)
    assert svc._write_cost >= 0.15  # 1.5 s at the default budget of 10%
    assert _interval(svc) == expected


def test_a_large_checkpoint_is_sent_in_slices_of_at_most_1024_states() -> None:
    svc, _calls, producer = _serving(0)
    _touch(svc, _many("s", 20_000), 0)  # a sixteenth would be 1,250
    svc._periodic_checkpoint()
    assert len(producer.sent) == 1024
    svc._send_queued_slice()
    assert len(producer.sent) == 2048
    _send_all_slices(svc)
    assert len(producer.sent) == 20_000
