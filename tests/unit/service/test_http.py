"""The HTTP endpoints on a real socket: /metrics, /healthz, /readyz following readiness."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.http import READINESS_CONDITIONS, HttpServer, Readiness
from service.metrics import ServiceMetrics


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


@pytest.fixture
def served() -> Iterator[tuple[int, ServiceMetrics, Readiness]]:
    metrics = ServiceMetrics()
    readiness = Readiness(metrics)
    server = HttpServer("127.0.0.1", 0, metrics, readiness).start()
    yield server.port, metrics, readiness
    server.stop()


def test_metrics_endpoint(served: tuple[int, ServiceMetrics, Readiness]) -> None:
    port, metrics, _ = served
    metrics.forecasts_produced.inc(5)
    status, content_type, body = _get(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["sensorcast_forecasts_produced"].samples[0].value == 5


def test_readyz_needs_every_condition(served: tuple[int, ServiceMetrics, Readiness]) -> None:
    port, metrics, readiness = served
    assert _get(port, "/healthz")[0] == 200
    for i, condition in enumerate(READINESS_CONDITIONS):
        status, _, body = _get(port, "/readyz")
        assert status == 503
        doc = json.loads(body)
        assert doc["ready"] is False and doc[condition] is False
        assert all(doc[c] for c in READINESS_CONDITIONS[:i])
        readiness.set(condition, True)
    status, _, body = _get(port, "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    assert metrics.registry.get_sample_value("sensorcast_ready") == 1
    readiness.set("broker_reachable", False)
    assert _get(port, "/readyz")[0] == 503
    assert metrics.registry.get_sample_value("sensorcast_ready") == 0


def test_unknown_path_and_condition(served: tuple[int, ServiceMetrics, Readiness]) -> None:
    port, _, readiness = served
    assert _get(port, "/admin")[0] == 404
    with pytest.raises(KeyError):
        readiness.set("feeling_lucky", True)
