"""SIGTERM to a real `sensorcast serve` process mid-stream: it finishes the batch in hand,
flushes, commits and exits 0; everything before the committed offsets has its forecast
published, and nothing after them does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from service.embedded import free_port
from service.testing import add_sensor_lstm
from tests.conftest import KafkaKit
from tests.integration.servicekit import CLIENTS, http_get, reading, wait_until

VALUES = {"temp": 20.0, "pressure": 101.0, "vibration": 0.5}


def _read_all(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> list[Any]:
    """Every record of `topic`: read until each partition's position reaches the high
    watermark reported by fetches (the embedded broker's ListOffsets answer is not exact)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records: list[Any] = []

    def caught_up() -> bool:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
        marks = [consumer.highwater(tp) for tp in tps]
        return all(
            m is not None and consumer.position(tp) >= m for tp, m in zip(tps, marks, strict=True)
        )

    try:
        wait_until(caught_up, timeout, f"reading all of {topic}", poll=0)
    finally:
        consumer.close()
    return records


def _feed(kafka: KafkaKit, topic: str, stop: threading.Event, sent: list[int]) -> None:
    """Readings of 100 streams, one step at a time, until told to stop."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=5)
    step = 0
    try:
        while not stop.is_set():
            ts = 1_700_000_000.0 + 300.0 * step
            for i in range(100):
                sid = f"st-{i:03d}"
                producer.send(topic, key=sid.encode(), value=reading(sid, ts, VALUES))
            producer.flush()
            sent[0] += 100
            step += 1
            stop.wait(0.02)  # pacing: a steady stream, not a burst
    finally:
        producer.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_sigterm_mid_stream_exits_zero_with_everything_committed_and_published(
    kafka: KafkaKit, tmp_path: Path, client: str
) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    topics = {"in": kafka.name("in"), "out": kafka.name("out"), "dlq": kafka.name("dlq")}
    group = kafka.name("g")
    kafka.create_topic(topics["in"], 4)
    port = free_port()
    env = {
        **os.environ,
        "SENSORCAST_KAFKA__CLIENT": client,
        "SENSORCAST_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap,
        "SENSORCAST_KAFKA__INPUT_TOPIC": topics["in"],
        "SENSORCAST_KAFKA__OUTPUT_TOPIC": topics["out"],
        "SENSORCAST_KAFKA__DEAD_LETTER_TOPIC": topics["dlq"],
        "SENSORCAST_KAFKA__GROUP_ID": group,
        "SENSORCAST_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "SENSORCAST_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "SENSORCAST_KAFKA__COMMIT_INTERVAL": "5",  # so the final checkpoint has work to do
        "SENSORCAST_MODEL__REGISTRY": str(model.registry),
        "SENSORCAST_MODEL__NAME": model.card.name,
        "SENSORCAST_HTTP__HOST": "127.0.0.1",
        "SENSORCAST_HTTP__PORT": str(port),
    }
    log_path = tmp_path / "serve.log"
    stop_feed = threading.Event()
    sent = [0]
    feeder = threading.Thread(
        target=_feed, args=(kafka, topics["in"], stop_feed, sent), daemon=True
    )
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:

            def ready() -> bool:
                try:
                    return http_get(port, "/readyz")[0] == 200
                except OSError:
                    return proc.poll() is not None

            wait_until(ready, 60, "the service to become ready")
            assert proc.poll() is None, log_path.read_text()
            feeder.start()
            kafka.consume_until(topics["out"], 1000, timeout=30)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        finally:
            stop_feed.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    feeder.join(10)
    log_text = log_path.read_text()
    assert code == 0, log_text
    assert "final checkpoint done" in log_text
    assert "Traceback" not in log_text

    probe = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False
    )
    try:
        committed = {p: probe.committed(TopicPartition(topics["in"], p)) or 0 for p in range(4)}
    finally:
        probe.close(autocommit=False)
    assert 1000 <= sum(committed.values()) < sent[0]  # stopped mid-stream
    forecasts = _read_all(kafka.bootstrap, topics["out"], 4)
    sources = sorted(
        (m["partition"], m["offset"]) for m in (json.loads(r.value) for r in forecasts)
    )
    assert sources == sorted((p, o) for p, end in committed.items() for o in range(end))
