"""`PlainRecords` against kafka-python's own `PartitionRecords` on the same fetched bytes (no
broker): the same records, positions, epochs and counts after every ``take``, the same
errors at the same record, and kafka-python's own parse for anything that is not plain."""

from __future__ import annotations

import struct
from typing import Any

import kafka
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.record.util import calc_crc32c

from service.kafka.records import PlainRecords, install, plain_batches

TP = TopicPartition("readings", 3)
TS = 1_764_650_000_000
_ATTRIBUTES = 21  # offset of a v2 batch's attributes (the CRC covers them and what follows)


def _batch(
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    base: int,
    epoch: int = 0,
    log_append: bool = False,
    compression: int = 0,
    extra_offsets: int = 0,
) -> bytes:
    """One v2 batch as kafka-python's builder writes it, placed at `base`, with its leader
    epoch set, its timestamp type log-append if asked, and `extra_offsets` more offsets
    after its last record (as compaction leaves a batch)."""
    builder = MemoryRecordsBuilder(2, compression, 1 << 20, offset=0)
    for i, (key, value, headers) in enumerate(records):
        builder.append(TS + 7 * i, key, value, headers)
    builder.close()
    buf = bytearray(builder.buffer())
    struct.pack_into(">q", buf, 0, base)
    struct.pack_into(">i", buf, 12, epoch)
    if log_append or extra_offsets:
        attributes, last_delta = struct.unpack_from(">hi", buf, _ATTRIBUTES)
        struct.pack_into(
            ">hi",
            buf,
            _ATTRIBUTES,
            attributes | (0x08 if log_append else 0),
            last_delta + extra_offsets,
        )
        struct.pack_into(">I", buf, 17, calc_crc32c(memoryview(buf)[_ATTRIBUTES:]))
    return bytes(buf)


def _takes(cls: Any, data: bytes, fetch_offset: int, sizes: list[int]) -> list[Any]:
    """What a fetcher sees of `cls` parsing `data`: after each take, the records (or the
    error), the position, epoch and counts, and whether it is drained."""
    parsed = cls(0 + fetch_offset, TP, MemoryRecords(data))
    seen: list[Any] = []
    for n in sizes:
        if not parsed:
            break  # drained: the fetcher takes no more from it
        try:
            out: Any = parsed.take(n)
        except CorruptRecordError as exc:
            out = ("error", str(exc))
        seen.append(
            (
                out,
                parsed.next_fetch_offset,
                parsed.leader_epoch,
                parsed.records_read,
                parsed.bytes_read,
                bool(parsed),
            )
        )
    return seen


_maybe_bytes = st.one_of(st.none(), st.binary(max_size=300))
_headers = st.lists(st.tuples(st.text(max_size=8), _maybe_bytes), max_size=2)
_record = st.tuples(_maybe_bytes, _maybe_bytes, st.one_of(st.just([]), _headers))
_batches = st.lists(
    st.tuples(
        st.lists(_record, min_size=1, max_size=12),
        st.integers(0, 3),  # offsets skipped before the batch
        st.integers(-1, 5),  # leader epoch
        st.booleans(),  # log-append time
        st.integers(0, 2),  # extra offsets after the last record
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(
    batches=_batches,
    cut=st.integers(0, 80),
    skip=st.integers(0, 6),
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=12),
)
def test_the_same_records_positions_and_counts_as_kafka_python(
    batches: list[Any], cut: int, skip: int, sizes: list[int]
) -> None:
    data = b""
    offset = 100
    for records, gap, epoch, log_append, extra in batches:
        offset += gap
        data += _batch(records, offset, epoch, log_append, extra_offsets=extra)
        offset += len(records) + extra
    data = data[: max(0, len(data) - cut)]  # the broker cuts a fetch inside its last batch
    assert plain_batches(data) is not None
    fetch_offset = 100 + skip  # a fetch from the middle of a batch starts at its beginning
    assert _takes(PlainRecords, data, fetch_offset, sizes) == _takes(
        Fetcher.PartitionRecords, data, fetch_offset, sizes
    )


def _one(
    value: bytes = b'{"stream_id":"s-1","ts":1764650000.0,"values":{"temp":21.5}}',
) -> list[Any]:
    return [(b"s-1", value, [])]


@pytest.mark.parametrize(
    "odd",
    [
        pytest.param(_batch(_one() * 20, 1, compression=1), id="gzip"),
        pytest.param(
            (lambda b: b[:_ATTRIBUTES] + struct.pack(">h", 0x10) + b[_ATTRIBUTES + 2 :])(
                _batch(_one(), 1)
            ),
            id="transactional",
        ),
    ],
)
def test_a_fetch_with_a_batch_that_is_not_plain_goes_through_kafka_python(
    odd: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _batch(_one(), 0) + odd
    assert struct.unpack_from(">h", odd, _ATTRIBUTES)[0] & 0x17
    assert plain_batches(data) is None

    def _not_here(*args: object) -> None:
        raise AssertionError("a fetch with a batch that is not plain took the plain path")

    monkeypatch.setattr(PlainRecords, "_unpack_plain", _not_here)
    ours = _takes(PlainRecords, data, 0, [5, 5])
    assert ours == _takes(Fetcher.PartitionRecords, data, 0, [5, 5])


def test_a_batch_failing_its_crc_raises_after_the_records_before_it() -> None:
    good = _batch(_one(), 0) + _batch(_one(), 1)
    bad = bytearray(_batch(_one(), 2))
    bad[-3] ^= 0xFF  # inside the record's value: the CRC no longer matches
    data = good + bytes(bad)
    ours = _takes(PlainRecords, data, 0, [1, 1, 1])
    assert ours == _takes(Fetcher.PartitionRecords, data, 0, [1, 1, 1])
    assert [len(t[0]) for t in ours[:2]] == [1, 1]
    assert ours[2][0][0] == "error" and "crc" in ours[2][0][1]


@pytest.mark.parametrize("delta", [-1, 1, 40])
def test_a_record_that_does_not_read_as_its_length_is_corrupt(delta: int) -> None:
    """With a valid CRC over a wrong record length (a faulty producer), the record is
    refused, not read into the next batch."""
    batch = bytearray(_batch(_one(b"21.5"), 0))
    batch[61] += 2 * delta  # the record's length, a one-byte zig-zag varint
    struct.pack_into(">I", batch, 17, calc_crc32c(memoryview(batch)[_ATTRIBUTES:]))
    data = bytes(batch) + _batch(_one(), 1)
    ours = _takes(PlainRecords, data, 0, [2])
    assert ours[0][0][0] == "error"
    assert _takes(Fetcher.PartitionRecords, data, 0, [2])[0][0][0] == "error"


def test_an_empty_fetch_is_drained_at_once() -> None:
    assert _takes(PlainRecords, b"", 0, [3]) == _takes(Fetcher.PartitionRecords, b"", 0, [3])


def test_the_installed_kafka_python_takes_the_plain_path() -> None:
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:9", api_version=(2, 8))
    try:
        assert install(consumer), f"kafka-python {kafka.__version__}: no plain path"
        assert consumer._fetcher.PartitionRecords is PlainRecords
    finally:
        consumer.close(timeout_ms=0)


def test_a_consumer_without_the_known_fetcher_is_left_alone() -> None:
    class _Other:
        PartitionRecords = object

    consumer = type("C", (), {"_fetcher": _Other()})()
    assert not install(consumer)
    assert consumer._fetcher.PartitionRecords is object
