"""Record bytes -> readings: the structural checks of the input topic's records.

`ReadingDecoder` checks a record's structure: tombstone, size, JSON, an object with a
non-empty ``stream_id`` matching the key, a ``ts`` (epoch seconds or ISO-8601, not too far
in the future) and ``values`` (an object or a list). What the values hold is the engine's to
judge against the model card. Parsing and the structural checks run in pydantic's Rust core
(``validate_json`` on the raw bytes, no ``json.loads``); the Python left per record is a key
comparison, a clock comparison and appending to columns. `decode_columns` hands the engine
a `ReadingBatch` (feature values read into one float32 matrix in bulk): the service's hot
path makes no per-reading objects. `decode` keeps the object form for tools and tests.

Records are validated one by one rather than joined into one JSON array per batch: the two
cost about the same (docs/benchmarks.md), and one at a time a malformed record can neither
fail nor, by splicing, corrupt its neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from operator import attrgetter
from typing import Annotated, Any

import numpy as np
from pydantic import Field, Strict, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from service.codec.deadletters import clip_detail
from service.codec.records import RawRecord, RecordColumns
from service.config import KafkaSettings
from service.core.readings import ForecastBatch, Reading, ReadingBatch, Reject, RejectReason
from service.core.values import FeatureValues
from service.modelcard import ModelCard

__all__ = [
    "FUTURE_FLOOR_SECONDS",
    "FUTURE_PERIODS",
    "MAX_STREAM_ID",
    "DecodedBatch",
    "DecodedColumns",
    "ReadingDecoder",
    "max_future_seconds",
    "parse_timestamp",
]

#: Longest stream id accepted, in characters: it becomes the key of every forecast and
#: state record of its stream.
MAX_STREAM_ID = 1024

#: The default bounds of ``kafka.max_future_seconds``: a reading stamped ahead of the
#: wall clock by more than 5 minutes, or 3 model periods when that is longer, is refused.
FUTURE_FLOOR_SECONDS = 300.0
FUTURE_PERIODS = 3.0

_KEY, _VALUE = attrgetter("key"), attrgetter("value")
_PARTITION, _OFFSET = attrgetter("partition"), attrgetter("offset")
_TIMESTAMP = attrgetter("timestamp")


class _ReadingJson(TypedDict):
    stream_id: Annotated[str, Strict(), Field(min_length=1)]
    ts: Annotated[float, Strict()] | Annotated[str, Strict()]
    values: Annotated[dict[str, Any], Strict()] | Annotated[list[Any], Strict()]


_ADAPTER: TypeAdapter[_ReadingJson] = TypeAdapter(_ReadingJson)

# Which reason a validation error at a given top-level field maps to, in priority order.
_FIELD_REASONS = (
    ("stream_id", RejectReason.MISSING_STREAM_ID, "stream_id must be a non-empty string"),
    ("ts", RejectReason.BAD_TIMESTAMP, "ts must be epoch seconds or an ISO-8601 string"),
    (
        "values",
        RejectReason.INVALID,
        "values must be an object keyed by feature or a list in feature order",
    ),
)


def parse_timestamp(ts: float | str) -> float | None:
    """Epoch seconds from a number or a string (a number, or ISO-8601; naive means UTC).

    None when it cannot be parsed or is not finite.
    """
    if isinstance(ts, str):
        text = ts.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                return None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            value = parsed.timestamp()
    else:
        value = float(ts)
    return value if math.isfinite(value) else None


def max_future_seconds(settings: KafkaSettings, card: ModelCard) -> float:
    """How far ahead of the wall clock a reading may be stamped: ``kafka.max_future_seconds``,
    or by default 5 minutes or 3 of the model's periods, whichever is longer (a sensor's
    clock may run a little fast; a reading from hours ahead is a clock fault, and applied
    it would make every later reading of its stream look late)."""
    if settings.max_future_seconds is not None:
        return settings.max_future_seconds
    return max(FUTURE_FLOOR_SECONDS, FUTURE_PERIODS * card.period)


def _structure_reject(exc: ValidationError) -> tuple[RejectReason, str]:
    errors = exc.errors(include_url=False)
    for err in errors:
        if err["type"] == "json_invalid":
            return RejectReason.NOT_JSON, clip_detail(f"not JSON: {err['msg']}")
    for err in errors:
        if not err["loc"]:
            return RejectReason.NOT_OBJECT, "the record is JSON but not an object"
    for name, reason, detail in _FIELD_REASONS:
        for err in errors:
            if err["loc"][0] == name:
                given = (
                    "" if err["type"] == "missing" else f" (got {clip_detail(repr(err['input']))})"
                )
                return reason, detail + given
    return RejectReason.INVALID, clip_detail(str(exc))


@dataclass(slots=True)
class DecodedBatch:
    """A poll batch decoded into `Reading` objects, and the records rejected for their
    structure."""

    readings: list[Reading] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


@dataclass(slots=True)
class DecodedColumns:
    """A poll batch decoded for the engine's columnar path: the readings that passed the
    structural checks as a `ReadingBatch` (their value problems in its `problems`, for the
    engine to reject in order), and the records rejected for their structure."""

    batch: ReadingBatch
    rejects: list[Reject]
    #: per row of `batch`: when its record was written to Kafka (the record timestamp, in
    #: seconds), NaN when the record has none
    written: np.ndarray

    def ages(self, forecasts: ForecastBatch, now: float) -> np.ndarray:
        """Seconds from each forecast's reading being written to Kafka to `now`, for the
        forecasts whose record has a timestamp (clipped at 0: the producer's clock may run
        ahead of ours). A forecast is matched to its row by its (partition, offset)."""
        if not len(forecasts):
            return np.empty(0, np.float64)
        batch = self.batch
        rows = _keys(batch.partitions, batch.offsets)
        wanted = _keys(forecasts.partitions, forecasts.offsets)
        if len(wanted) == len(rows) and np.array_equal(wanted, rows):
            written = self.written  # one forecast per reading, in order: the common case
        else:
            order = np.argsort(rows, kind="stable")
            written = self.written[order[np.searchsorted(rows, wanted, sorter=order)]]
        ages: np.ndarray = now - written[~np.isnan(written)]
        np.maximum(ages, 0.0, out=ages)
        return ages


def _keys(partitions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """One int64 per (partition, offset): offsets stay below 2**40."""
    keys: np.ndarray = (partitions.astype(np.int64) << 40) | offsets
    return keys


@dataclass(slots=True)
class _Columns:
    stream_ids: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)


def _keys_and_values(
    records: Sequence[RawRecord],
) -> tuple[list[bytes | None], list[bytes | None]]:
    """The key and value of every record, as two lists taken in bulk."""
    if isinstance(records, RecordColumns):
        return records.keys, records.values
    return list(map(_KEY, records)), list(map(_VALUE, records))


def _positions(
    records: Sequence[RawRecord], rejected: list[int]
) -> tuple[list[int], list[int], list[int], list[int] | None]:
    """Partition, offset and timestamp of every record not `rejected` (positions in
    `records`), taken in bulk rather than one append each; and the positions kept (None:
    every record)."""
    if isinstance(records, RecordColumns):
        partitions, offsets = list(records.partitions), list(records.offsets)
        timestamps = list(records.timestamps)
    else:
        partitions = list(map(_PARTITION, records))
        offsets = list(map(_OFFSET, records))
        timestamps = list(map(_TIMESTAMP, records))
    if not rejected:
        return partitions, offsets, timestamps, None
    gone = set(rejected)
    keep = [i for i in range(len(offsets)) if i not in gone]
    partitions = [partitions[i] for i in keep]
    offsets = [offsets[i] for i in keep]
    timestamps = [timestamps[i] for i in keep]
    return partitions, offsets, timestamps, keep


class ReadingDecoder:
    """Turns a poll batch of records into readings and rejects (structure only)."""

    def __init__(
        self,
        *,
        max_message_bytes: int,
        max_future_seconds: float,
        partition_of: Mapping[str, int] | None = None,
    ) -> None:
        """`partition_of` maps each stream seen so far to its input partition (the service's
        `PartitionStreams.partition_of`, kept up to date by the service): a reading of a
        known stream arriving on another partition is rejected as ``partition_mismatch``."""
        self.max_message_bytes = max_message_bytes
        self.max_future_seconds = max_future_seconds
        self.partition_of: Mapping[str, int] = partition_of if partition_of is not None else {}

    def decode(self, records: Sequence[RawRecord], *, received: float) -> DecodedBatch:
        """Decode `records` into `Reading` objects; `received` is the wall-clock time the
        batch was polled."""
        columns, rejects = self._decode(records, received)
        readings = list(
            map(
                Reading,
                columns.stream_ids,
                columns.ts,
                columns.values,
                columns.partitions,
                columns.offsets,
                [received] * len(columns.ts),
            )
        )
        return DecodedBatch(readings, rejects)

    def decode_columns(
        self, records: Sequence[RawRecord], *, received: float, values: FeatureValues
    ) -> DecodedColumns:
        """Decode `records` for `StreamEngine.process_batch`: the structure is checked here,
        and the feature values are read into a float32 matrix in bulk with `values` (the
        card's features, and whether missing values are imputed)."""
        columns, rejects = self._decode(records, received)
        matrix, problems = values.matrix(columns.values)
        n = len(columns.ts)
        batch = ReadingBatch(
            columns.stream_ids,
            np.array(columns.ts, np.float64),
            matrix,
            np.array(columns.partitions, np.int32),
            np.array(columns.offsets, np.int64),
            np.full(n, received),
            problems,
        )
        written = np.array(columns.timestamps, np.float64)
        written[written < 0] = np.nan
        written /= 1000.0
        return DecodedColumns(batch, rejects, written)

    # Over 60 lines on purpose: the per-record loop stays in one frame, since a helper call
    # per record (tens of thousands a second) would cost measurable throughput.
    def _decode(
        self, records: Sequence[RawRecord], received: float
    ) -> tuple[_Columns, list[Reject]]:
        """The structural checks, record by record in one loop (the hot path: nothing in it
        calls a function per accepted record beyond validating it), then the accepted
        records' positions in bulk and the partition check."""
        keys, values = _keys_and_values(records)
        out = _Columns()
        rejects: list[Reject] = []
        rejected: list[int] = []  # positions in `records`

        def reject(at: int, reason: RejectReason, detail: str) -> None:
            # `_reject` inlined: a rejected record costs this one call, an accepted one none
            record = records[at]
            rejected.append(at)
            rejects.append(
                Reject(
                    reason, detail, None, record.partition, record.offset, {"topic": record.topic}
                )
            )

        add_id, add_ts, add_values = out.stream_ids.append, out.ts.append, out.values.append
        horizon = received + self.max_future_seconds
        max_bytes = self.max_message_bytes
        validate = _ADAPTER.validate_json
        at = -1
        for key, value in zip(keys, values, strict=True):
            at += 1
            if not value:
                reject(at, RejectReason.TOMBSTONE, "the record has no value")
                continue
            if len(value) > max_bytes:
                reject(
                    at,
                    RejectReason.OVERSIZED,
                    f"{len(value)} bytes is more than max_message_bytes={max_bytes}",
                )
                continue
            try:
                doc = validate(value)
            except ValidationError as exc:
                reject(at, *_structure_reject(exc))
                continue
            stream_id = doc["stream_id"]
            if key is None:
                reject(
                    at,
                    RejectReason.MISSING_KEY,
                    clip_detail(
                        f"the record of stream {stream_id!r} has no key: produce readings "
                        "keyed by their stream id, so that a stream's readings share "
                        "one partition and stay in order"
                    ),
                )
                continue
            if len(stream_id) > MAX_STREAM_ID:
                reject(
                    at,
                    RejectReason.INVALID,
                    f"stream_id is {len(stream_id)} characters; at most {MAX_STREAM_ID}",
                )
                continue
            if key != stream_id.encode():
                shown = key.decode("utf-8", "replace")
                reject(
                    at,
                    RejectReason.KEY_MISMATCH,
                    clip_detail(f"key {shown!r} differs from stream_id {stream_id!r}"),
                )
                continue
            raw_ts = doc["ts"]
            ts = (
                raw_ts
                if type(raw_ts) is float and math.isfinite(raw_ts)
                else parse_timestamp(raw_ts)
            )
            if ts is None:
                reject(
                    at,
                    RejectReason.BAD_TIMESTAMP,
                    clip_detail(f"ts {raw_ts!r} is not epoch seconds or an ISO-8601 time"),
                )
                continue
            if ts > horizon:
                reject(
                    at,
                    RejectReason.FUTURE_TIMESTAMP,
                    f"ts {ts:.3f} is {ts - received:.0f} s ahead of the clock "
                    f"(max_future_seconds={self.max_future_seconds:g})",
                )
                continue
            add_id(stream_id)
            add_ts(ts)
            add_values(doc["values"])
        out.partitions, out.offsets, out.timestamps, kept = _positions(records, rejected)
        if out.stream_ids:
            self._check_partitions(records, out, rejects, kept)
        return out, rejects

    def _check_partitions(
        self,
        records: Sequence[RawRecord],
        out: _Columns,
        rejects: list[Reject],
        positions: list[int] | None,
    ) -> None:
        """Reject the readings of a stream that arrive on a partition other than the one
        its readings came on so far (or, for a stream new in this batch, its first
        reading's): a stream's state is only right when its readings share one partition,
        whose offsets order them. `positions` maps rows of `out` to `records` (None: the
        same)."""
        ids, partitions = out.stream_ids, out.partitions
        get = self.partition_of.get
        known = list(map(get, ids, repeat(-1, len(ids))))
        if -1 not in known and known == partitions:
            return  # the common case: every stream known, each on its own partition
        first: dict[str, int] = {}
        bad: list[int] = []
        for row, (sid, was, partition) in enumerate(zip(ids, known, partitions, strict=True)):
            if was < 0:
                was = first.setdefault(sid, partition)
            if was != partition:
                bad.append(row)
                at = row if positions is None else positions[row]
                rejects.append(
                    self._reject(
                        records[at],
                        RejectReason.PARTITION_MISMATCH,
                        clip_detail(
                            f"stream {sid!r} is on partition {was}, this reading came on "
                            f"partition {partition}: a stream's readings must share one "
                            "partition (produce them keyed by stream id with one partitioner)"
                        ),
                    )
                )
        if bad:
            gone = set(bad)
            for column in (
                "stream_ids",
                "ts",
                "values",
                "partitions",
                "offsets",
                "timestamps",
            ):
                values = getattr(out, column)
                setattr(out, column, [v for i, v in enumerate(values) if i not in gone])

    @staticmethod
    def _reject(record: RawRecord, reason: RejectReason, detail: str) -> Reject:
        return Reject(
            reason, detail, None, record.partition, record.offset, {"topic": record.topic}
        )
