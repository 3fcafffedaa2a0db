"""The state changelog against the real broker: records land on the partitions they are
sent to and are read back to the true end of the log; a restarted service restores every
stream before processing and continues each stream's state exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.app import Service
from service.config import KafkaSettings
from service.errors import TopicError
from service.kafka.changelog import ChangelogReader, ChangelogWriter
from service.kafka.connect import KafkaTransport
from service.testing import add_sensor_lstm
from service.transport import StateReader, StateWriter
from tests.conftest import KafkaKit
from tests.fault.faultkit import read_topic
from tests.integration.servicekit import CLIENTS, reading, running, settings_for

N_STREAMS = 30


def _values(i: int, step: int) -> dict[str, float]:
    return {"temp": 20.0 + i + 0.5 * step, "pressure": 101.0 - 0.1 * step, "vibration": 0.5}


def _step(step: int) -> list[tuple[str, bytes]]:
    ts = 1_700_000_000.0 + 300.0 * step
    return [(f"cl-{i:02d}", reading(f"cl-{i:02d}", ts, _values(i, step))) for i in range(N_STREAMS)]


def _clients(client: str, settings: KafkaSettings) -> tuple[StateWriter, StateReader]:
    if client == "confluent":
        from service.kafka.confluent.changelog import (
            ConfluentChangelogReader,
            ConfluentChangelogWriter,
        )

        return ConfluentChangelogWriter(settings), ConfluentChangelogReader(settings)
    return ChangelogWriter(settings), ChangelogReader(settings)


@pytest.mark.parametrize("client", CLIENTS)
def test_records_are_read_back_to_the_end_of_the_log_last_per_key(
    kafka: KafkaKit, client: str
) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, group_id=kafka.name("g"))
    topic = kafka.create_topic(f"{settings.group_id}.state", 3)
    writer, reader = _clients(client, settings)
    try:
        # batches of 100 then 50: the embedded broker's ListOffsets would say 101
        writer.send([1] * 100, [f"s{i}" for i in range(100)], [b"a%d" % i for i in range(100)])
        writer.flush(10)
        keys = [f"s{i}" for i in range(50)]
        values: list[bytes | None] = [b"b%d" % i for i in range(50)]
        values[7] = None  # s7 evicted
        writer.send([1] * 50, keys, values)
        writer.send([2], ["other"], [b"z"])
        writer.flush(10)
        restored = {r.partition: r for r in reader.read([0, 1, 2], timeout=30)}
    finally:
        writer.close()
        reader.close()
    assert topic == f"{settings.group_id}.state"
    assert restored[0].records == 0 and restored[0].states == {}
    assert restored[1].records == 150 and restored[1].tombstones == 1
    assert len(restored[1].states) == 99 and "s7" not in restored[1].states
    assert restored[1].states["s3"] == b"b3" and restored[1].states["s60"] == b"a60"
    assert restored[2].states == {"other": b"z"}


@pytest.mark.parametrize("client", CLIENTS)
def test_restart_restores_every_stream_and_continues_its_state(
    kafka: KafkaKit, tmp_path: Path, client: str
) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    settings = settings_for(
        kafka.bootstrap, model.registry, model.card.name, kafka.name, **{"kafka.client": client}
    )
    k = settings.kafka
    kafka.create_topic(k.input_topic, 4)
    for step in range(3):
        kafka.produce(k.input_topic, _step(step))
    with running(settings) as first:
        kafka.consume_until(k.output_topic, 3 * N_STREAMS)
    store = first.service.engine.store  # type: ignore[union-attr]
    before = {sid: (store.info(sid), store.states_of(sid)) for sid in store.ids()}
    assert len(before) == N_STREAMS
    written = first.metric("sensorcast_changelog_records_total", {"kind": "state"})
    assert written >= N_STREAMS

    with running(settings) as second:
        second.wait_ready()  # state_restored is part of readiness
        again = second.service.engine.store  # type: ignore[union-attr]
        assert sorted(again.ids()) == sorted(before)
        for sid, (info, states) in before.items():
            got = again.info(sid)
            assert got is not None and info is not None
            assert (got.last_ts, got.steps, got.applied_offset) == (
                info.last_ts,
                info.steps,
                info.applied_offset,
            )
            for a, b in zip(again.states_of(sid) or [], states or [], strict=True):
                np.testing.assert_array_equal(a, b)
        restored = sum(
            second.metric("sensorcast_restored_streams", {"partition": str(p)}) for p in range(4)
        )
        assert restored == N_STREAMS
        kafka.produce(k.input_topic, _step(3))
        out = kafka.consume_until(k.output_topic, 4 * N_STREAMS)
    messages = [json.loads(r.value) for r in out]
    assert len({(m["stream_id"], m["ts"]) for m in messages}) == 4 * N_STREAMS
    for i in range(N_STREAMS):
        sid = f"cl-{i:02d}"
        rows = np.array([list(_values(i, s).values()) for s in range(4)])
        expected = model.expected(rows)[:, :, 0]
        ms = sorted((m for m in messages if m["stream_id"] == sid), key=lambda m: m["ts"])
        actual = np.asarray([m["forecast"]["temp"] for m in ms])
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6)


def test_a_changelog_with_another_partition_count_is_refused(
    kafka: KafkaKit, tmp_path: Path
) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    settings = settings_for(kafka.bootstrap, model.registry, model.card.name, kafka.name)
    kafka.create_topic(settings.kafka.input_topic, 4)
    kafka.create_topic(f"{settings.kafka.group_id}.state", 2)
    with pytest.raises(TopicError, match=r"has 2 partitions and the input .* has 4"):
        KafkaTransport(settings.kafka).open(settings.kafka, Service(settings))


def test_evicted_streams_get_tombstones_on_their_input_partition(
    kafka: KafkaKit, tmp_path: Path
) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    settings = settings_for(
        kafka.bootstrap,
        model.registry,
        model.card.name,
        kafka.name,
        **{"kafka.max_batch": 5, "engine.max_streams": 10},
    )
    k = settings.kafka
    kafka.create_topic(k.input_topic, 4)
    kafka.produce(k.input_topic, _step(0))
    with running(settings) as svc:
        kafka.consume_until(k.output_topic, N_STREAMS)
        held = set(svc.service.engine.store.ids())  # type: ignore[union-attr]
        evicted = svc.metric("sensorcast_evictions_total", {"cause": "capacity"})
    assert len(held) == 10 and evicted == N_STREAMS - 10
    tombstones = svc.metric("sensorcast_changelog_records_total", {"kind": "tombstone"})
    assert tombstones == N_STREAMS - 10
    source = {r.key: r.partition for r in kafka.consume_until(k.input_topic, N_STREAMS)}
    records = read_topic(kafka.bootstrap, f"{k.group_id}.state")  # to the end
    last: dict[bytes, bytes | None] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert r.partition == source[r.key]  # the input partition, not the key hash
        last[r.key] = r.value
    assert {key.decode() for key, v in last.items() if v is not None} == held
    assert sum(1 for v in last.values() if v is None) == N_STREAMS - 10
