"""The changelog bookkeeping above the clients: a read keeps the last record per key of each
partition, says how long each took to reach its end and fails past its deadline naming the
partitions left; a writer counts the bytes it sends and reports failed deliveries once."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from service.changelog import ChangelogRead, ChangelogReading, ChangelogWriting
from service.errors import ChangelogError


def test_a_read_keeps_the_last_record_per_key_of_each_partition() -> None:
    read = ChangelogRead("g.state", [3, 1, 3], timeout=5)
    assert read.partitions == [1, 3] and read.pending == {1, 3}
    read.add_all(1, [(b"a", b"1"), (b"b", b"2")])
    read.add(1, b"a", b"3")
    read.add(1, b"b", None)
    read.add(3, None, b"not ours")
    read.add_all(3, [])
    read.reached_end(3)
    assert read.pending == {1}
    read.reached_end(1)
    read.reached_end(1)  # said again: nothing
    one, three = read.restores()
    assert (one.partition, one.states, one.records, one.tombstones) == (1, {"a": b"3"}, 4, 1)
    assert (three.partition, three.states, three.records, three.tombstones) == (3, {}, 1, 0)
    assert one.seconds >= 0 and three.seconds >= 0


def test_a_read_past_its_deadline_names_the_pending_partitions_and_the_last_error() -> None:
    read = ChangelogRead("g.state", [0, 1, 2], timeout=0.01)
    read.check_deadline()  # in time
    read.reached_end(1)
    time.sleep(0.02)
    with pytest.raises(ChangelogError) as caught:
        read.check_deadline()
    assert str(caught.value) == (
        "changelog g.state partitions [0, 2] not read to their end within 0.01 s"
    )
    with pytest.raises(ChangelogError, match=r"within 0.01 s \(BROKER: down\)$"):
        read.check_deadline("BROKER: down")


class ListReader(ChangelogReading):
    """Reads partitions from lists of (key, value); counts its fetches."""

    def __init__(self, logs: dict[int, list[tuple[bytes | None, bytes | None]]]) -> None:
        super().__init__("g.state")
        self.logs = logs
        self.fetches = 0

    def _read_to_end(self, read: ChangelogRead) -> None:
        for p in read.partitions:
            self.fetches += 1
            read.add_all(p, self.logs[p])
            read.reached_end(p)


def test_reading_no_partitions_fetches_nothing() -> None:
    reader = ListReader({})
    assert reader.read([], timeout=1) == []
    assert reader.fetches == 0


def test_reading_returns_each_partition_in_order() -> None:
    reader = ListReader({0: [(b"a", b"1")], 2: [(b"b", None)]})
    restored = reader.read({2, 0}, timeout=1)
    assert [(r.partition, r.states, r.tombstones) for r in restored] == [
        (0, {"a": b"1"}, 0),
        (2, {}, 1),
    ]


class ListWriter(ChangelogWriting):
    """Queues records in a list; `failures` are reported at the next delivery."""

    def __init__(self, failures: Sequence[str] = ()) -> None:
        super().__init__("g.state")
        self.queued: list[tuple[int, bytes, bytes | None]] = []
        self.failures = list(failures)

    def _produce_all(
        self, partitions: Sequence[int], keys: Sequence[bytes], values: Sequence[bytes | None]
    ) -> None:
        self.queued.extend(zip(partitions, keys, values, strict=True))

    def _deliver(self, timeout: float) -> None:
        for failure in self.failures:
            self._delivery_failed(failure)
        self.failures = []


def test_a_writer_sends_encoded_keys_and_counts_key_and_value_bytes() -> None:
    writer = ListWriter()
    assert writer.send([1, 0], ["ab", "c"], [b"123", None]) == 2 + 3 + 1
    assert writer.queued == [(1, b"ab", b"123"), (0, b"c", None)]
    writer.flush(1.0)


def test_a_writer_reports_failed_deliveries_once() -> None:
    writer = ListWriter(failures=["timed out", "refused"])
    writer.send([0], ["a"], [b"1"])
    with pytest.raises(
        ChangelogError, match="2 changelog records failed delivery; first error: timed out"
    ):
        writer.flush(1.0)
    writer.flush(1.0)  # reported once
