"""A second member joins: the first checkpoints (flush, changelog, commit) on revoke and
drops the streams of the partitions it hands over, which the second restores; no reading is
lost or processed twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from service.testing import add_sensor_lstm
from tests.conftest import KafkaKit
from tests.integration.servicekit import (
    CLIENTS,
    RunningService,
    reading,
    settings_for,
    wait_until,
)

VALUES = {"temp": 20.0, "pressure": 101.0, "vibration": 0.5}
N_STREAMS = 80


def _records(step: int) -> list[tuple[str, bytes]]:
    ts = 1_700_000_000.0 + 300.0 * step
    return [(f"rb-{i:03d}", reading(f"rb-{i:03d}", ts, VALUES)) for i in range(N_STREAMS)]


@pytest.mark.parametrize("client", CLIENTS)
def test_second_member_takes_over_partitions_without_loss_or_duplicates(
    kafka: KafkaKit, tmp_path: Path, client: str
) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    settings = settings_for(
        kafka.bootstrap, model.registry, model.card.name, kafka.name, **{"kafka.client": client}
    )
    k = settings.kafka
    first = RunningService(settings).start()
    second: RunningService | None = None
    try:
        first.wait_ready()
        for step in range(3):
            kafka.produce(k.input_topic, _records(step))
        kafka.consume_until(k.output_topic, 3 * N_STREAMS)
        wait_until(
            lambda: first.metric("sensorcast_active_streams") == N_STREAMS, 10, "all streams held"
        )

        second = RunningService(settings).start()
        second.wait_ready()
        pair = (first, second)

        def shared() -> bool:
            counts = [m.metric("sensorcast_assigned_partitions") for m in pair]
            moved = first.metric("sensorcast_evictions_total", {"cause": "revoked"})
            return sum(counts) == 4 and min(counts) > 0 and moved > 0

        wait_until(shared, 30, "the partitions to be shared and handed-over streams dropped")
        # Everything the first member processed was committed before it let go.
        probe = KafkaConsumer(
            bootstrap_servers=kafka.bootstrap, group_id=k.group_id, enable_auto_commit=False
        )
        try:
            committed = sum(
                probe.committed(TopicPartition(k.input_topic, p)) or 0 for p in range(4)
            )
        finally:
            probe.close(autocommit=False)
        assert committed == 3 * N_STREAMS
        # The first member kept only the streams of the partitions it still owns.
        kept = first.service.engine.store  # type: ignore[union-attr]
        dropped = first.metric("sensorcast_evictions_total", {"cause": "revoked"})
        assert len(kept) + dropped == N_STREAMS and 0 < len(kept) < N_STREAMS

        kafka.produce(k.input_topic, _records(3))
        out = kafka.consume_until(k.output_topic, 4 * N_STREAMS)
        assert second.metric("sensorcast_forecasts_produced_total") > 0
        restored = sum(
            second.metric("sensorcast_restored_streams", {"partition": str(p)}) for p in range(4)
        )
    finally:
        if second is not None:
            assert second.stop() == 0
        assert first.stop() == 0
    messages = [json.loads(r.value) for r in out]
    assert len(messages) == 4 * N_STREAMS
    assert len({(m["stream_id"], m["ts"]) for m in messages}) == 4 * N_STREAMS
    last = [m for m in messages if m["ts"] == 1_700_000_000.0 + 900.0]
    # Streams that moved were restored from the changelog by the second member: like the
    # streams that stayed, their step-4 forecast continues their state.
    assert len(last) == N_STREAMS and all(m["warm"] for m in last)
    assert restored == dropped
