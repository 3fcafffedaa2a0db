"""`sensorcast replay` and `sensorcast tail` against a real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from service.cli import main
from service.tools.sources import synthetic
from tests.conftest import KafkaKit


def test_replay_publishes_exactly_the_readings_keyed_by_stream(kafka: KafkaKit) -> None:
    topic = kafka.create_topic(partitions=3)
    expected = list(synthetic(20, 60, seed=4).readings())
    argv = ["replay", "--bootstrap-servers", kafka.bootstrap, "--topic", topic]
    assert main([*argv, "--streams", "20", "--steps", "60", "--seed", "4", "-q"]) == 0

    # A marker after the replay on every partition: whatever precedes them is all it sent.
    for p in range(3):
        kafka.produce(topic, [("end", None)], partition=p)
    records = kafka.consume_until(topic, lambda rs: sum(r.key == b"end" for r in rs) == 3)
    records = [r for r in records if r.key != b"end"]
    assert len(records) == len(expected)
    per_stream: dict[str, list[tuple[float, dict[str, float]]]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        msg = json.loads(r.value)
        assert r.key.decode() == msg["stream_id"]
        per_stream[msg["stream_id"]].append((msg["ts"], msg["values"]))
        partitions[msg["stream_id"]].add(r.partition)
    want: dict[str, list[tuple[float, dict[str, float]]]] = defaultdict(list)
    for sid, ts, values in expected:
        want[sid].append((ts, values))
    assert per_stream == want  # same readings, each stream in its own order
    assert all(len(p) == 1 for p in partitions.values())
    assert len({p for ps in partitions.values() for p in ps}) > 1  # spread over partitions


def test_replay_of_a_csv_file_at_a_rate(kafka: KafkaKit, tmp_path: Path) -> None:
    topic = kafka.create_topic(partitions=1)
    rows = ["stream_id,ts,temp,load"]
    rows += [f"pump-{i % 3},2024-01-01T00:{i // 3:02d}:00Z,{20 + i},{i % 5}" for i in range(30)]
    path = tmp_path / "readings.csv"
    path.write_text("\n".join(rows) + "\n")
    argv = ["replay", str(path), "--bootstrap-servers", kafka.bootstrap, "--topic", topic]
    started = time.monotonic()
    assert main([*argv, "--rate", "200", "-q"]) == 0
    assert time.monotonic() - started >= (30 - 4) / 200  # paced: bursts of 4 every 20 ms
    records = kafka.consume_until(topic, 30)
    first = json.loads(records[0].value)
    assert first == {
        "stream_id": "pump-0",
        "ts": 1704067200.0,
        "values": {"temp": 20.0, "load": 0.0},
    }
    assert [r.key for r in records[:3]] == [b"pump-0", b"pump-1", b"pump-2"]


def _forecast(stream_id: str, ts: float, temp: float) -> str:
    return json.dumps(
        {
            "stream_id": stream_id,
            "ts": ts,
            "model": {"name": "sensors-demo", "version": "1"},
            "horizon_ts": [ts + 300, ts + 600],
            "forecast": {"temp": [temp, temp + 1]},
            "warm": True,
            "partition": 0,
            "offset": 1,
        }
    )


def test_tail_prints_the_forecasts_of_chosen_streams(
    kafka: KafkaKit, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = kafka.create_topic(partitions=2)
    records: list[tuple[str | None, str | None]] = [("x", "not a forecast")]
    records += [
        (s, _forecast(s, 1732262400.0 + 300 * i, 40.0 + i)) for i in range(4) for s in ("a", "b")
    ]
    kafka.produce(topic, records)
    argv = ["tail", "--bootstrap-servers", kafka.bootstrap, "--topic", topic, "--from-beginning"]
    assert main([*argv, "--stream", "b", "--max", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert all(" b " in line and " warm " in line for line in lines)
    assert lines[0] == "2024-11-22 08:00:00  b                warm  temp: 40 41"
    assert "temp: 42 43" in lines[2]

    assert main([*argv, "--idle-timeout", "1"]) == 0  # everything, then quiet for a second
    lines = capsys.readouterr().out.strip().splitlines()
    assert sorted(line.split()[2] for line in lines) == ["a"] * 4 + ["b"] * 4


def test_tail_follows_new_forecasts_and_exits_cleanly_on_ctrl_c(kafka: KafkaKit) -> None:
    topic = kafka.create_topic(partitions=1)
    kafka.produce(topic, [("old", _forecast("old", 1.0, 1.0))])  # before the tail: not shown
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "tail",
            "--bootstrap-servers",
            kafka.bootstrap,
            "--topic",
            topic,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        n = 0
        while not lines:  # the tail starts at the end: keep publishing until it shows one
            assert time.monotonic() < deadline, "tail printed nothing"
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            kafka.produce(topic, [("new", _forecast("new", 1732262400.0 + n, 5.0))])
            n += 1
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    assert all(" new " in line for line in lines)
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
