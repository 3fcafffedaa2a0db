"""Bad records land in the dead-letter topic with the right reason, bump the reject counter,
and never stop the service: a valid reading of the same stream after each still gets its
forecast. One service serves every case (a group join costs seconds); each case uses its own
stream id."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.codec import (
    HEADER_DETAIL,
    HEADER_REASON,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
)
from tests.conftest import KafkaKit
from tests.integration.servicekit import (
    CLIENTS,
    RunningService,
    reading,
    serving,
)

MAX_MESSAGE_BYTES = 2048
TS = 1_700_000_000.0
GOOD = {"temp": 21.5, "pressure": 101.2, "vibration": 0.4}


def _doc(sid: str, **changes: object) -> bytes:
    doc: dict[str, object] = {"stream_id": sid, "ts": TS, "values": dict(GOOD)}
    doc.update(changes)
    return json.dumps(doc).encode()


# case -> (value builder taking the stream id, whether the key is sent, expected reason)
CASES = {
    "not-json": (lambda sid: b'{"stream_id": "' + sid.encode() + b'", ts', "not_json"),
    "json-not-object": (lambda sid: b'["' + sid.encode() + b'", 1, 2]', "not_object"),
    "missing-stream-id": (
        lambda sid: json.dumps({"ts": TS, "values": GOOD}).encode(),
        "missing_stream_id",
    ),
    "empty-stream-id": (lambda sid: _doc(""), "missing_stream_id"),
    "key-mismatch": (lambda sid: _doc(sid + "-other"), "key_mismatch"),
    "unknown-feature": (
        lambda sid: _doc(sid, values={**GOOD, "humidity": 40.0}),
        "unknown_feature",
    ),
    "missing-feature": (
        lambda sid: _doc(sid, values={"temp": 21.0, "pressure": 101.0}),
        "missing_feature",
    ),
    "non-numeric": (lambda sid: _doc(sid, values={**GOOD, "temp": "hot"}), "non_numeric"),
    "nan": (
        lambda sid: reading(sid, TS, {**GOOD, "temp": float("nan")}),  # json.dumps writes NaN
        "non_finite",
    ),
    "infinity": (lambda sid: reading(sid, TS, {**GOOD, "vibration": float("inf")}), "non_finite"),
    "unparseable-ts": (lambda sid: _doc(sid, ts="last tuesday"), "bad_timestamp"),
    "future-ts": (lambda sid: _doc(sid, ts=time.time() + 10 * 86_400), "future_timestamp"),
    "oversized": (
        lambda sid: _doc(sid, note="x" * (2 * MAX_MESSAGE_BYTES)),
        "oversized",
    ),
    "tombstone": (lambda sid: None, "tombstone"),
}


@pytest.fixture(scope="module", params=CLIENTS)
def served(
    broker: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[RunningService, KafkaKit]]:
    with serving(
        broker,
        Path(tmp_path_factory.mktemp("models")),
        f"dead-letters-{request.param}",
        **{
            "kafka.max_message_bytes": MAX_MESSAGE_BYTES,
            "kafka.max_wait_ms": 20,
            "kafka.client": request.param,
        },
    ) as served:
        yield served


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_record_is_dead_lettered_and_the_stream_goes_on(
    served: tuple[RunningService, KafkaKit], case: str
) -> None:
    svc, kafka = served
    k = svc.settings.kafka
    build, reason = CASES[case]
    sid = f"dl-{case}"
    before = svc.metric("sensorcast_rejects_total", {"reason": reason})
    bad = build(sid)
    kafka.produce(k.input_topic, [(sid, bad), (sid, reading(sid, TS + 300.0, GOOD))])

    dlq = kafka.consume_until(
        k.dead_letter_topic, lambda rs: any(r.key == sid.encode() for r in rs)
    )
    (letter,) = [r for r in dlq if r.key == sid.encode()]
    headers = {name: value.decode() for name, value in letter.headers}
    assert headers[HEADER_REASON] == reason
    assert headers[HEADER_DETAIL]
    assert headers[HEADER_SOURCE_TOPIC] == k.input_topic
    assert (letter.value or None) == bad  # the original bytes (a tombstone stays empty)

    forecasts = kafka.consume_until(
        k.output_topic, lambda rs: any(r.key == sid.encode() for r in rs)
    )
    mine = [json.loads(r.value) for r in forecasts if r.key == sid.encode()]
    assert [m["ts"] for m in mine] == [TS + 300.0]
    # The dead letter points back at the bad record, just before the good one.
    assert int(headers[HEADER_SOURCE_PARTITION]) == mine[0]["partition"]
    assert int(headers[HEADER_SOURCE_OFFSET]) == mine[0]["offset"] - 1
    assert svc.metric("sensorcast_rejects_total", {"reason": reason}) == before + 1
