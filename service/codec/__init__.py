"""The bytes of Sensorcast's Kafka records, with no Kafka client in sight.

`records`: consumed records as the decoder sees them, whichever client polled them
(`RawRecord`, `RecordColumns`, `next_offsets`). `readings`: the input topic's records ->
readings and rejects (`ReadingDecoder`). `deadletters`: rejected records as dead letters,
with the headers that say why and where from, cut to fit the broker. `forecasts`: forecasts
-> the forecast topic's JSON (`ForecastEncoder`). The transports hand this package records
and send what it returns; nothing here opens a connection.
"""

from __future__ import annotations

from service.codec.deadletters import (
    HEADER_DETAIL,
    HEADER_REASON,
    HEADER_SOURCE_BYTES,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    HEADER_TRUNCATED,
    MAX_DETAIL,
    DeadLetter,
    clip_detail,
    dead_letter_headers,
    fit_dead_letter,
    shrink_dead_letter,
)
from service.codec.forecasts import ForecastEncoder
from service.codec.readings import (
    FUTURE_FLOOR_SECONDS,
    FUTURE_PERIODS,
    MAX_STREAM_ID,
    DecodedBatch,
    DecodedColumns,
    ReadingDecoder,
    max_future_seconds,
    parse_timestamp,
)
from service.codec.records import RawRecord, RecordColumns, next_offsets

__all__ = [
    "FUTURE_FLOOR_SECONDS",
    "FUTURE_PERIODS",
    "HEADER_DETAIL",
    "HEADER_REASON",
    "HEADER_SOURCE_BYTES",
    "HEADER_SOURCE_OFFSET",
    "HEADER_SOURCE_PARTITION",
    "HEADER_SOURCE_TOPIC",
    "HEADER_TRUNCATED",
    "MAX_DETAIL",
    "MAX_STREAM_ID",
    "DeadLetter",
    "DecodedBatch",
    "DecodedColumns",
    "ForecastEncoder",
    "RawRecord",
    "ReadingDecoder",
    "RecordColumns",
    "clip_detail",
    "dead_letter_headers",
    "fit_dead_letter",
    "max_future_seconds",
    "next_offsets",
    "parse_timestamp",
    "shrink_dead_letter",
]
