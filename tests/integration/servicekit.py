"""Helpers for the service's integration tests: the settings of a service bound to fresh
topics and a fresh group, and a `Service` run in a thread with its HTTP endpoints. The model
they serve comes from `service.testing.add_sensor_lstm`."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from service.app import Service
from service.config import ServiceSettings, load_settings
from service.testing import add_sensor_lstm
from tests.conftest import KafkaKit

GROUP = {"kafka.session_timeout_ms": 6000, "kafka.heartbeat_interval_ms": 1000}

try:
    import confluent_kafka  # noqa: F401

    _NO_CONFLUENT = ""
except ImportError:
    _NO_CONFLUENT = "confluent-kafka is not installed (the confluent extra)"

#: The Kafka clients a test runs over (``kafka.client``): parametrize with
#: ``@pytest.mark.parametrize("client", CLIENTS)`` and pass ``**{"kafka.client": client}``.
CLIENTS = [
    "kafka-python",
    pytest.param("confluent", marks=pytest.mark.skipif(bool(_NO_CONFLUENT), reason=_NO_CONFLUENT)),
]


def settings_for(
    bootstrap: str, registry: Path, model: str, name: Callable[[str], str], **overrides: Any
) -> ServiceSettings:
    """Settings with fresh topics and group (names from `name(prefix)`), HTTP on a free port."""
    values: dict[str, Any] = {
        "kafka.bootstrap_servers": bootstrap,
        "kafka.input_topic": name("in"),
        "kafka.output_topic": name("out"),
        "kafka.dead_letter_topic": name("dlq"),
        "kafka.group_id": name("g"),
        "kafka.partitions": 4,
        "kafka.commit_interval": 0.5,
        "model.registry": str(registry),
        "model.name": model,
        "http.host": "127.0.0.1",
        "http.port": 0,
        **GROUP,
    }
    values.update(overrides)
    return load_settings(None, values)


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class RunningService:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.service = Service(settings)
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="service-under-test", daemon=True)

    def _run(self) -> None:
        try:
            self.exit_code = self.service.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> RunningService:
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        port = self.service.http_port
        assert port is not None
        return port

    def ready(self) -> bool:
        status, _ = http_get(self.port, "/readyz")
        return status == 200

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(lambda: self.ready() or not self._thread.is_alive(), timeout, "/readyz")
        if self.error is not None:
            raise self.error
        assert self.ready()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.service.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def join(self, timeout: float = 30.0) -> int | None:
        """Wait for the service to end by itself; re-raise what ended it."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the service is still running"
        if self.error is not None:
            raise self.error
        return self.exit_code

    def stop(self, timeout: float = 30.0) -> int | None:
        self.service.stop()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the service did not stop"
        if self.error is not None:
            raise self.error
        return self.exit_code


@contextmanager
def running(settings: ServiceSettings) -> Iterator[RunningService]:
    svc = RunningService(settings).start()
    try:
        yield svc
    finally:
        code = svc.stop()
    assert code == 0


def reading(stream_id: str, ts: float | str, values: Any) -> bytes:
    return json.dumps({"stream_id": stream_id, "ts": ts, "values": values}).encode()


@contextmanager
def serving(
    broker: str,
    registry: Path,
    prefix: str,
    *,
    feature_ranges: list[tuple[float, float]] | None = None,
    **overrides: Any,
) -> Iterator[tuple[RunningService, KafkaKit]]:
    """One ready service on fresh topics (names from `prefix`) serving `add_sensor_lstm`'s
    model (its card recording `feature_ranges`) from `registry`, with a `KafkaKit` for the test;
    stops it cleanly (exit 0) at the end. For a module-scoped fixture shared by many cases:
    a group join costs seconds."""
    kit = KafkaKit(broker, prefix)
    model = add_sensor_lstm(registry, feature_ranges=feature_ranges)
    settings = settings_for(broker, model.registry, model.card.name, kit.name, **overrides)
    svc = RunningService(settings).start()
    try:
        svc.wait_ready()
        yield svc, kit
    finally:
        code = svc.stop()
        kit.close()
    assert code == 0
