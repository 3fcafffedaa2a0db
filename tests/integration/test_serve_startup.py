"""Start-up and broker trouble: settings precedence and errors through the real command,
missing topics, and a broker that is unreachable at start or goes away during the run."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.embedded import EmbeddedBroker, free_port
from service.errors import TopicError
from service.testing import add_sensor_lstm
from tests.conftest import KafkaKit
from tests.integration.servicekit import (
    RunningService,
    http_get,
    reading,
    settings_for,
    wait_until,
)

VALUES = {"temp": 20.0, "pressure": 101.0, "vibration": 0.5}


def _sensorcast(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SENSORCAST_")}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_file_env_and_flags_combine_in_the_documented_order(tmp_path: Path) -> None:
    config = tmp_path / "sensorcast.toml"
    config.write_text(
        '[kafka]\nmax_batch = 10\ninput_topic = "file-in"\ngroup_id = "file-group"\n'
        '[model]\nname = "file-model"\n'
    )
    env = {"SENSORCAST_KAFKA__MAX_BATCH": "20", "SENSORCAST_KAFKA__INPUT_TOPIC": "env-in"}
    done = _sensorcast(
        "settings", "--effective", "--config", str(config), "--set", "kafka.max_batch=30",
        "--model", "flag-model:7", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    effective = json.loads(done.stdout)
    assert effective["kafka"]["max_batch"] == 30
    assert effective["kafka"]["input_topic"] == "env-in"
    assert effective["kafka"]["group_id"] == "file-group"
    assert effective["model"] == {**effective["model"], "name": "flag-model", "version": "7"}
    assert effective["kafka"]["output_topic"] == "forecasts"


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--set", "kafka.max_batch=0"], {}, "invalid setting kafka.max_batch"),
        (
            [],
            {"SENSORCAST_HTTP__PORT": "eighty"},
            "invalid setting http.port (SENSORCAST_HTTP__PORT)",
        ),
        (["--log-format", "xml"], {}, "invalid setting log.format"),
        (["--set", "kafka.max_batch"], {}, "--set 'kafka.max_batch': use SECTION.NAME=VALUE"),
    ],
)
def test_bad_setting_is_one_clear_line_and_status_2(
    args: list[str], env: dict[str, str], needle: str
) -> None:
    done = _sensorcast("serve", *args, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sensorcast: error: ") and needle in lines[0]


def test_busy_http_port_is_one_clear_line(tmp_path: Path) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _sensorcast(
            "serve", "--registry", str(model.registry), "--model", model.card.name,
            "--set", "http.host=127.0.0.1", "--http-port", str(port),
        )  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("sensorcast: error: http.port: cannot listen on 127.0.0.1:")


def test_missing_topic_without_create_is_an_error_naming_it(
    kafka: KafkaKit, tmp_path: Path
) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    settings = settings_for(
        kafka.bootstrap,
        model.registry,
        model.card.name,
        kafka.name,
        **{"kafka.create_topics": False},
    )
    svc = RunningService(settings).start()
    with pytest.raises(TopicError, match=settings.kafka.input_topic):
        svc.join(timeout=30)


def test_unreachable_broker_at_start_retries_with_backoff_and_stops_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.app")
    model = add_sensor_lstm(tmp_path / "models")
    nobody = f"127.0.0.1:{free_port()}"
    settings = settings_for(nobody, model.registry, model.card.name, lambda p: f"{p}-unreachable")
    svc = RunningService(settings).start()
    started = time.monotonic()

    def attempts() -> list[str]:
        return [r.getMessage() for r in caplog.records if "broker unreachable" in r.getMessage()]

    wait_until(lambda: len(attempts()) >= 2, 30, "two connection attempts")
    status, body = http_get(svc.port, "/readyz")
    doc = json.loads(body)
    assert status == 503 and doc["broker_reachable"] is False and doc["model_loaded"] is True
    assert http_get(svc.port, "/healthz")[0] == 200
    lines = attempts()
    assert nobody in lines[0] and "retry_in=0.5s" in lines[0] and "retry_in=1.0s" in lines[1]
    # backoff, not a busy loop: attempts grow at most logarithmically with time
    assert len(lines) <= 2 + (time.monotonic() - started)
    assert svc.stop(timeout=15) == 0


def test_broker_lost_during_the_run_turns_not_ready_without_spinning(tmp_path: Path) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    broker = EmbeddedBroker().start()
    try:
        kit = KafkaKit(broker.bootstrap, "broker-lost")
        settings = settings_for(
            broker.bootstrap,
            model.registry,
            model.card.name,
            kit.name,
            **{"kafka.checkpoint_timeout": 2.0, "kafka.shutdown_timeout": 2.0},
        )
        svc = RunningService(settings).start()
        svc.wait_ready()
        kit.produce(
            settings.kafka.input_topic, [("lost-1", reading("lost-1", 1_700_000_000.0, VALUES))]
        )
        kit.consume_until(settings.kafka.output_topic, 1)
        kit.close()
        wait_until(
            lambda: svc.metric("sensorcast_checkpoints_total", {"outcome": "ok"}) >= 1,
            10,
            "a checkpoint",
        )
    finally:
        broker.stop(timeout=0.5)  # SIGTERM, then SIGKILL: it would wait out our connections
    wait_until(lambda: not svc.ready(), 30, "/readyz to report the broker gone")
    doc = json.loads(http_get(svc.port, "/readyz")[1])
    assert doc["broker_reachable"] is False
    before, t0 = svc.metric("sensorcast_poll_loop_iterations_total"), time.monotonic()
    wait_until(lambda: time.monotonic() - t0 > 1.0, 5, "a second to pass", poll=0.1)
    per_second = (svc.metric("sensorcast_poll_loop_iterations_total") - before) / (
        time.monotonic() - t0
    )
    assert per_second < 200  # polls wait for data (max_wait_ms); a busy loop would be far higher
    code = svc.stop(timeout=60)
    assert code in (0, 1)  # 1 only when records were left unacknowledged
