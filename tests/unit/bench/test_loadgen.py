from __future__ import annotations

import json

import numpy as np
import pytest
from kafka.partitioner.default import DefaultPartitioner

from bench.loadgen import ReadingPlan, latencies, partition_of, summarize
from service.codec import ReadingDecoder


class _Cluster:
    def __init__(self, n: int) -> None:
        self._parts = set(range(n))

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self._parts

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._parts


class _Record:
    def __init__(self, key: bytes, value: bytes, offset: int) -> None:
        self.topic, self.partition, self.offset = "t", 0, offset
        self.key, self.value, self.timestamp = key, value, -1


def test_partition_matches_kafka_python_default_partitioner() -> None:
    plan = ReadingPlan(n_streams=200, n_partitions=4)
    keys = plan.keys()
    expected = [DefaultPartitioner().partition("t", k, k, None, None, _Cluster(4)) for k in keys]
    assert plan.partitions(keys) == expected
    assert partition_of(keys[0], 4) == expected[0]
    assert set(expected) == {0, 1, 2, 3}


def test_step_records_are_readings_the_service_accepts() -> None:
    plan = ReadingPlan(n_streams=50, n_partitions=4)
    keys = plan.keys()
    values = plan.step_records(7, keys)
    records = [_Record(k, v, i) for i, (k, v) in enumerate(zip(keys, values, strict=True))]
    decoded = ReadingDecoder(max_message_bytes=65_536, max_future_seconds=86_400).decode(
        records, received=plan.ts(7)
    )
    assert decoded.rejects == []
    assert [r.stream_id for r in decoded.readings] == [k.decode() for k in keys]
    assert all(r.ts == plan.ts(7) for r in decoded.readings)
    doc = json.loads(values[3])
    assert set(doc["values"]) == {"temp", "pressure", "vibration"}
    assert 30 < doc["values"]["temp"] < 70
    assert all(len(v) < 120 for v in values)


def test_locate_inverts_the_send_order() -> None:
    plan = ReadingPlan(n_streams=30, n_partitions=4)
    keys = plan.keys()
    start_step = 5
    for k in range(95):
        stream, step = keys[k % 30].decode(), start_step + k // 30
        assert plan.locate(stream, plan.ts(step), start_step) == k


def test_latencies_match_send_and_arrival_times() -> None:
    plan = ReadingPlan(n_streams=3, n_partitions=4)
    start_step = 2
    sent = np.array([10.0, 10.1, 10.2, 10.3])  # streams 0, 1, 2 at step 2; stream 0 at step 3
    received = [
        ("sensor-00001", plan.ts(2), 10.15),  # 50 ms
        ("sensor-00000", plan.ts(3), 10.5),  # 200 ms
        ("sensor-00000", plan.ts(2), 10.11),  # 110 ms
        ("sensor-00000", plan.ts(2), 10.9),  # a duplicate: the first arrival counts
        ("sensor-00002", plan.ts(1), 9.0),  # an earlier phase's reading: not ours
        ("sensor-00001", plan.ts(3), 11.0),  # never sent in this run
    ]
    lat = latencies(received, sent, plan, start_step)
    np.testing.assert_allclose(np.sort(lat), [0.05, 0.11, 0.2])
    summary = summarize(lat)
    assert summary.count == 3
    assert summary.max_ms == pytest.approx(200.0)
    assert summary.p50_ms == pytest.approx(110.0)
    assert summary.p99_ms == pytest.approx(np.percentile([50.0, 110.0, 200.0], 99))


def test_summarize_nothing() -> None:
    summary = summarize(np.array([]))
    assert summary.count == 0
    assert np.isnan(summary.p99_ms)
