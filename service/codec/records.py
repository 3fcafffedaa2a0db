"""Consumed records as the decoder sees them, whichever Kafka client polled them.

`RawRecord` is what a record must offer (kafka-python's `ConsumerRecord` fits as it is);
`RecordColumns` holds a poll batch of one topic as columns, for a client whose records are
not attribute objects. `next_offsets` says where each partition of a batch resumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, overload

__all__ = ["RawRecord", "RecordColumns", "next_offsets"]


class RawRecord(Protocol):
    """What the decoder needs of a consumed record (kafka-python's `ConsumerRecord` fits)."""

    @property
    def topic(self) -> str:
        """The topic the record was consumed from."""
        ...

    @property
    def partition(self) -> int:
        """The partition of `topic` the record was consumed from."""
        ...

    @property
    def offset(self) -> int:
        """The record's offset in its partition."""
        ...

    @property
    def key(self) -> bytes | None:
        """The record's key bytes; None when it has none."""
        ...

    @property
    def value(self) -> bytes | None:
        """The record's value bytes; None for a tombstone."""
        ...

    @property
    def timestamp(self) -> int:
        """Milliseconds since the epoch: the producer's CreateTime, or the broker's
        LogAppendTime; negative when the record has none."""
        ...


class _ColumnRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


@dataclass(frozen=True, slots=True)
class RecordColumns(Sequence[_ColumnRecord]):
    """A poll batch of one topic held as columns: what a client whose records are not
    attribute objects (confluent-kafka's `Message` has methods) hands the decoder, built
    with one list comprehension per field, which costs less than wrapping each message in a
    small object (docs/benchmarks.md). Indexing gives a `RawRecord` (for dead letters)."""

    topic: str
    keys: list[bytes | None]
    values: list[bytes | None]
    partitions: list[int]
    offsets: list[int]
    timestamps: list[int]  # milliseconds, negative for none (see `RawRecord.timestamp`)

    def __len__(self) -> int:
        return len(self.offsets)

    @overload
    def __getitem__(self, index: int) -> _ColumnRecord: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[_ColumnRecord]: ...
    def __getitem__(self, index: int | slice) -> _ColumnRecord | Sequence[_ColumnRecord]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        return _ColumnRecord(
            self.topic,
            self.partitions[index],
            self.offsets[index],
            self.keys[index],
            self.values[index],
            self.timestamps[index],
        )


def next_offsets(records: Sequence[RawRecord]) -> dict[int, int]:
    """The offset after the last record of each partition in `records`: where consuming
    that partition resumes once `records` are processed. Records of one partition come in
    increasing offset order, so the last one seen is the highest."""
    if isinstance(records, RecordColumns):
        return {p: o + 1 for p, o in zip(records.partitions, records.offsets, strict=True)}
    return {r.partition: r.offset + 1 for r in records}
