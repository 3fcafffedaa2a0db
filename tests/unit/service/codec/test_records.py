"""Records as the decoder sees them: a batch held as columns indexes as records do, and
`next_offsets` says where each partition of a batch resumes."""

from __future__ import annotations

from dataclasses import dataclass

from service.codec import RawRecord, RecordColumns, next_offsets


@dataclass
class Rec:
    partition: int
    offset: int
    key: bytes | None = b"pump-1"
    value: bytes | None = b"{}"
    topic: str = "sensor-readings"
    timestamp: int = -1


def _columns(records: list[Rec]) -> RecordColumns:
    return RecordColumns(
        "sensor-readings",
        [r.key for r in records],
        [r.value for r in records],
        [r.partition for r in records],
        [r.offset for r in records],
        [r.timestamp for r in records],
    )


# three partitions interleaved, each in increasing offset order
BATCH = [Rec(0, 10), Rec(2, 7), Rec(0, 11), Rec(1, 0), Rec(2, 8), Rec(0, 15), Rec(1, 1)]


def test_next_offsets_of_records_is_one_past_each_partitions_last() -> None:
    records: list[RawRecord] = list(BATCH)
    assert next_offsets(records) == {0: 16, 1: 2, 2: 9}


def test_next_offsets_of_columns_is_the_same() -> None:
    assert next_offsets(_columns(BATCH)) == {0: 16, 1: 2, 2: 9}
    assert next_offsets(_columns(BATCH[:2])) == {0: 11, 2: 8}


def test_next_offsets_of_nothing_is_empty() -> None:
    assert next_offsets([]) == {}
    assert next_offsets(_columns([])) == {}


def test_columns_index_as_records() -> None:
    columns = _columns([Rec(2, 7), Rec(1, 3, value=None), Rec(0, 8, key=b"pump-9")])
    assert len(columns) == 3
    assert (columns[2].topic, columns[2].partition, columns[2].key, columns[2].offset) == (
        "sensor-readings",
        0,
        b"pump-9",
        8,
    )
    assert columns[1].value is None
    assert [r.offset for r in columns[1:3]] == [3, 8]
