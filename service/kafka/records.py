"""Fetched records into `ConsumerRecord` objects in one pass, for the kafka-python consumer.

kafka-python turns a fetch answer into records batch by batch and record by record: each
batch is copied into a `DefaultRecordBatch`, each record becomes a `DefaultRecord` whose
fields are read through properties, then a `ConsumerRecord`, with the deserializers and the
header sizes worked out on the way. On many readings from few streams that parse is the
consumer's largest cost. `PlainRecords` reads a fetch answer whose batches are all *plain*
(record format v2, uncompressed, neither transactional nor control) straight from the
fetched bytes into the same `ConsumerRecord` objects, with the same CRC check, the same
positions (`next_fetch_offset` after every record, the batch's next offset at its end) and
the same counts. A fetch answer with any other batch, or a consumer with deserializers, goes
through kafka-python's own parse unchanged.

This reaches into kafka-python's fetcher (its ``PartitionRecords`` class and the fetched
``MemoryRecords`` buffer). `install` checks that the consumer has those parts and leaves
it alone otherwise; a test asserts that the installed kafka-python takes this path.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord, Fetcher
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.util import calc_crc32c, decode_varint

__all__ = ["PlainRecords", "install", "plain_batches"]

_HEADER = DefaultRecordBatch.HEADER_STRUCT  # the v2 batch header, 61 bytes
_LOG_OVERHEAD = 12  # base offset and length: the bytes before the length counts from
_CRC_FROM = 21  # the CRC covers the batch from its attributes on
# compression codec, transactional and control bits: any set makes a batch not plain
_NOT_PLAIN = DefaultRecordBatch.CODEC_MASK | (
    DefaultRecordBatch.TRANSACTIONAL_MASK | DefaultRecordBatch.CONTROL_MASK
)
_LOG_APPEND_TIME = DefaultRecordBatch.TIMESTAMP_TYPE_MASK


def plain_batches(buffer: Any) -> list[tuple[int, int, tuple[Any, ...]]] | None:
    """The complete batches of a fetch answer as ``(start, end, header)``, or None if any
    of them is not plain. A partial batch at the end (the broker cuts fetches at a size) is
    left out, as kafka-python leaves it."""
    out = []
    size = len(buffer)
    pos = 0
    while size - pos >= _LOG_OVERHEAD:
        end = pos + _LOG_OVERHEAD + struct.unpack_from(">i", buffer, pos + 8)[0]
        if end > size:
            break
        if end - pos < _HEADER.size:
            return None  # too short for a v2 batch: kafka-python's parse says what it is
        header = _HEADER.unpack_from(buffer, pos)
        if header[3] != 2 or header[5] & _NOT_PLAIN:
            return None
        out.append((pos, end, header))
        pos = end
    return out


class PlainRecords(Fetcher.PartitionRecords):  # type: ignore[misc]
    """kafka-python's fetched records of one partition, parsed in one pass when plain."""

    def _unpack_records(
        self,
        tp: TopicPartition,
        records: Any,
        key_deserializer: Any,
        value_deserializer: Any,
    ) -> Iterator[ConsumerRecord]:
        buffer = getattr(records, "_buffer", None)
        batches = None
        if key_deserializer is None and value_deserializer is None and buffer is not None:
            batches = plain_batches(buffer)
        if batches is None:
            return super()._unpack_records(tp, records, key_deserializer, value_deserializer)  # type: ignore[no-any-return]
        return self._unpack_plain(tp, buffer, batches)

    def _unpack_plain(
        self, tp: TopicPartition, buffer: Any, batches: list[tuple[int, int, tuple[Any, ...]]]
    ) -> Iterator[ConsumerRecord]:
        topic, partition = tp.topic, tp.partition
        next_offset = None
        for start, end, header in batches:
            base, _, epoch, _, crc, attributes, last_delta, first_ts, max_ts = header[:9]
            if self.check_crcs and calc_crc32c(memoryview(buffer)[start + _CRC_FROM : end]) != crc:
                raise CorruptRecordError(
                    f"Record batch for partition {tp} at offset {base} failed crc check"
                )
            self.leader_epoch = epoch
            log_append = attributes & _LOG_APPEND_TIME
            timestamp_type = 1 if log_append else 0
            pos = start + _HEADER.size
            for _ in range(header[12]):
                try:
                    record, pos, length = _record(buffer, pos, end)
                except (ValueError, IndexError) as exc:
                    raise CorruptRecordError(f"Found invalid record structure: {exc!r}") from exc
                ts_delta, offset_delta, key, value, headers = record
                offset = base + offset_delta
                self.records_read += 1
                self.bytes_read += length
                self.next_fetch_offset = offset + 1
                yield ConsumerRecord(
                    topic,
                    partition,
                    epoch,
                    offset,
                    max_ts if log_append else first_ts + ts_delta,
                    timestamp_type,
                    key,
                    value,
                    headers,
                    None,
                    -1 if key is None else len(key),
                    -1 if value is None else len(value),
                    sum(len(k.encode()) + (0 if v is None else len(v)) for k, v in headers)
                    if headers
                    else -1,
                )
            if pos != end:
                raise CorruptRecordError(f"{end - pos} unconsumed bytes after all records consumed")
            next_offset = base + last_delta + 1
        if next_offset is not None:
            # format v2 keeps a batch's last offset even when compaction removed its record
            self.next_fetch_offset = next_offset
        self.drain()


def _bytes(buffer: Any, pos: int) -> tuple[bytes | None, int]:
    """A length-prefixed byte string (None for length -1) and the position after it."""
    n, pos = decode_varint(buffer, pos)
    if n < 0:
        return None, pos
    return bytes(buffer[pos : pos + n]), pos + n


def _record(buffer: Any, pos: int, end: int) -> tuple[tuple[Any, ...], int, int]:
    """One v2 record at `pos` of a batch ending at `end`: ``(timestamp delta, offset delta,
    key, value, headers)``, the position after it, and its length. A record that does not
    read as exactly its length, within its batch, raises ValueError before anything of it
    is returned. (kafka-python's `decode_varint` reads a one-byte varint without a loop.)"""
    length, pos = decode_varint(buffer, pos)
    start = pos
    if length < 0 or start + length > end:
        raise ValueError(f"record of {length} bytes runs past its batch")
    ts_delta, pos = decode_varint(buffer, pos + 1)  # after the record's attributes, unused
    offset_delta, pos = decode_varint(buffer, pos)
    key, pos = _bytes(buffer, pos)
    value, pos = _bytes(buffer, pos)
    count, pos = decode_varint(buffer, pos)
    headers: list[tuple[str, bytes | None]] = []
    if count:
        if count < 0:
            raise ValueError(f"invalid number of record headers {count}")
        for _ in range(count):
            name, pos = _bytes(buffer, pos)
            if name is None:
                raise ValueError("a header without a key")
            header_value, pos = _bytes(buffer, pos)
            headers.append((name.decode("utf-8"), header_value))
    if pos - start != length:
        raise ValueError(f"record of {length} bytes read as {pos - start}")
    return (ts_delta, offset_delta, key, value, headers), pos, length


def install(consumer: KafkaConsumer) -> bool:
    """Make `consumer` parse plain fetch answers with `PlainRecords`; False (and the
    consumer unchanged) when its fetcher is not the one this module knows."""
    fetcher = getattr(consumer, "_fetcher", None)
    if (
        fetcher is None
        or getattr(fetcher, "PartitionRecords", None) is not Fetcher.PartitionRecords
    ):
        return False
    if not callable(getattr(Fetcher.PartitionRecords, "_unpack_records", None)):
        return False
    fetcher.PartitionRecords = PlainRecords
    return True
