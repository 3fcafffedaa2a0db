from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.embedded import EmbeddedBroker, broker_bootstrap
from service.errors import BrokerError


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_starts_answers_and_stops_without_leaking(tmp_path: Path) -> None:
    from kafka import KafkaAdminClient

    log_path = tmp_path / "broker.log"
    with EmbeddedBroker(log_path=log_path) as broker:
        pid = broker.pid
        assert pid is not None and _alive(pid)
        assert broker.running
        host, port = broker.bootstrap.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            assert isinstance(admin.list_topics(), list)
        finally:
            admin.close()
    assert not broker.running
    assert not _alive(pid)
    assert not os.path.exists(f"/proc/{pid}")  # reaped, not a zombie
    assert "listening on" in log_path.read_text()  # a log path that was given is kept


def test_round_trip_through_own_broker() -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    with EmbeddedBroker() as broker:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        for i in range(50):
            # one partition, so the order read back is the order sent
            producer.send("round-trip", key=f"k{i}".encode(), value=f"v{i}".encode(), partition=0)
        producer.flush()
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
        tp = TopicPartition("round-trip", 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got: list[tuple[bytes, bytes]] = []
        for _ in range(40):
            for records in consumer.poll(timeout_ms=500).values():
                got.extend((r.key, r.value) for r in records)
            if len(got) >= 50:
                break
        consumer.close()
    assert got == [(f"k{i}".encode(), f"v{i}".encode()) for i in range(50)]


def test_temporary_log_is_removed_on_stop() -> None:
    broker = EmbeddedBroker().start()
    log_path = broker.log_path
    assert log_path is not None and log_path.exists()
    broker.stop()
    assert not log_path.exists()
    broker.stop()  # idempotent


def test_port_in_use_fails_with_the_broker_log() -> None:
    with EmbeddedBroker() as first:
        second = EmbeddedBroker(port=first.port, startup_timeout=10)
        with pytest.raises(BrokerError) as info:
            second.start()
        assert not second.running
        assert "log ends with" in str(info.value)
        assert first.running


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="cannot run the embedded broker"):
        EmbeddedBroker(binary=str(tmp_path / "no-such-broker")).start()


def test_bootstrap_from_environment_starts_nothing() -> None:
    with broker_bootstrap({"KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092"}) as bootstrap:
        assert bootstrap == "kafka-1:9092"


def test_bootstrap_without_environment_starts_embedded_broker() -> None:
    with broker_bootstrap({}) as bootstrap:
        assert bootstrap.startswith("127.0.0.1:")


def test_session_fixtures_round_trip_keyed_records(kafka, group_id: str) -> None:
    topic = kafka.create_topic(partitions=3)
    assert kafka.partitions(topic) == [0, 1, 2]
    sent = [(f"s{i % 7}", f'{{"i": {i}}}') for i in range(100)]
    assert kafka.produce(topic, sent) == 100
    records = kafka.consume_until(topic, 100)
    assert len(records) == 100
    assert sorted((r.key.decode(), r.value.decode()) for r in records) == sorted(sent)
    # one key, one partition
    by_key: dict[bytes, set[int]] = {}
    for r in records:
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in by_key.values())
    with pytest.raises(TimeoutError, match="read 100 records"):
        kafka.consume_until(topic, 101, timeout=1.0)
    assert group_id.startswith("g-")


def test_port_taken_after_choosing_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.embedded as embedded

    real_free_port = embedded.free_port
    with EmbeddedBroker() as first:
        ports = iter([first.port, real_free_port()])
        monkeypatch.setattr(embedded, "free_port", lambda host="127.0.0.1": next(ports))
        with EmbeddedBroker() as second:
            assert second.port != first.port
            assert second.running and first.running


def test_broker_dies_with_its_parent() -> None:
    import signal
    import subprocess
    import sys
    import time

    code = (
        "from service.embedded import EmbeddedBroker\n"
        "b = EmbeddedBroker().start()\n"
        "print(b.pid, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        broker_pid = int(parent.stdout.readline())
        assert _alive(broker_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(broker_pid):
            assert time.monotonic() < deadline, "the broker outlived its parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
