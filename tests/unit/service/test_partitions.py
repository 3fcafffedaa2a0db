"""Partition ownership: which streams leave when partitions move."""

from __future__ import annotations

from service.core.readings import Reading
from service.partitions import PartitionStreams


def _tracked() -> PartitionStreams:
    streams = PartitionStreams()
    streams.note(
        [Reading(f"s{p}{i}", 1.0, {}, partition=p, offset=i) for p in range(4) for i in range(2)]
    )
    return streams


def test_eager_rebalance_keeping_the_same_share_drops_nothing() -> None:
    streams = _tracked()
    streams.revoked({0, 1, 2, 3})
    streams.assigned({0, 1, 2, 3})
    moves = streams.take_moves()
    assert moves.assigned and moves.partitions == set() and moves.stream_ids == []
    assert len(streams) == 8


def test_revoked_partitions_that_do_not_come_back_leave_at_the_assignment() -> None:
    streams = _tracked()
    streams.revoked({0, 1, 2, 3})
    assert streams.take_moves().stream_ids == []  # not yet: they may come back
    streams.assigned({1, 3})
    moves = streams.take_moves()
    assert moves.partitions == {0, 2}
    assert sorted(moves.stream_ids) == ["s00", "s01", "s20", "s21"]
    assert len(streams) == 4
    assert streams.take_moves().stream_ids == []  # applied once


def test_lost_partitions_leave_at_once() -> None:
    streams = _tracked()
    streams.lost({3})
    moves = streams.take_moves()
    assert not moves.assigned and moves.partitions == {3}
    assert sorted(moves.stream_ids) == ["s30", "s31"]


def test_streams_follow_their_latest_partition_and_forget() -> None:
    streams = _tracked()
    streams.note([Reading("s00", 2.0, {}, partition=2, offset=9)])
    streams.forget(["s01"])
    streams.lost({0})
    assert streams.take_moves().stream_ids == []
    streams.lost({2})
    assert sorted(streams.take_moves().stream_ids) == ["s00", "s20", "s21"]
