"""/metrics, /healthz and /readyz of a running service; a real Prometheus scrapes it when the
binary is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.embedded import free_port
from service.metrics import METRIC_NAMES
from service.testing import add_sensor_lstm
from tests.conftest import KafkaKit
from tests.integration.servicekit import (
    http_get,
    reading,
    running,
    settings_for,
    wait_until,
)

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
)
VALUES = {"temp": 20.0, "pressure": 101.0, "vibration": 0.5}


def _families(port: int) -> dict[str, object]:
    status, body = http_get(port, "/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def test_metrics_parse_and_every_metric_is_present(kafka: KafkaKit, tmp_path: Path) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    settings = settings_for(kafka.bootstrap, model.registry, model.card.name, kafka.name)
    k = settings.kafka
    with running(settings) as svc:
        svc.wait_ready()
        records = [
            (f"m-{i}", reading(f"m-{i}", 1_700_000_000.0 + 300 * j, VALUES))
            for j in range(3)
            for i in range(20)
        ]
        records.append(("m-0", b"not json"))
        kafka.produce(k.input_topic, records)
        kafka.consume_until(k.output_topic, 60)
        wait_until(
            lambda: (
                svc.metric("sensorcast_consumer_lag", {"topic": k.input_topic, "partition": "0"})
                == 0
                and svc.metric("sensorcast_active_streams") == 20
            ),
            10,
            "gauges after a checkpoint",
        )
        families = _families(svc.port)
        missing = [name for name in METRIC_NAMES if name not in families]
        assert not missing
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families.values()
            for s in f.samples
        }
        assert samples[("sensorcast_readings_consumed_total", ())] == 61
        assert samples[("sensorcast_forecasts_produced_total", ())] == 60
        assert samples[("sensorcast_rejects_total", (("reason", "not_json"),))] == 1
        assert samples[("sensorcast_batch_size_count", ())] >= 1
        fingerprint = svc.service.engine.fingerprint.hex() if svc.service.engine else ""
        info = (
            ("fingerprint", fingerprint),
            ("kind", "lstm"),
            ("name", model.card.name),
            ("version", "1"),
        )
        assert len(fingerprint) == 32 and samples[("sensorcast_model_info", info)] == 1
        assert samples[("sensorcast_ready", ())] == 1
        assert {
            p
            for (n, labels), _ in samples.items()
            if n == "sensorcast_consumer_lag"
            for key, p in labels
            if key == "partition"
        } == {"0", "1", "2", "3"}
        status, body = http_get(svc.port, "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        assert http_get(svc.port, "/healthz")[0] == 200
        assert http_get(svc.port, "/nope")[0] == 404


@pytest.mark.skipif(
    PROMETHEUS is None, reason="the prometheus binary is not installed (Debian package prometheus)"
)
def test_prometheus_scrapes_the_service(kafka: KafkaKit, tmp_path: Path) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    settings = settings_for(kafka.bootstrap, model.registry, model.card.name, kafka.name)
    k = settings.kafka
    with running(settings) as svc:
        svc.wait_ready()
        kafka.produce(
            k.input_topic,
            [(f"p-{i}", reading(f"p-{i}", 1_700_000_000.0, VALUES)) for i in range(25)],
        )
        kafka.consume_until(k.output_topic, 25)
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n"
            "scrape_configs:\n  - job_name: sensorcast\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{svc.port}']\n"
        )
        web = free_port()
        assert PROMETHEUS is not None
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            query = urllib.parse.quote('sensorcast_forecasts_produced_total{job="sensorcast"}')

            def scraped() -> bool:
                try:
                    status, body = http_get(web, f"/api/v1/query?query={query}")
                except OSError:
                    return False
                result = json.loads(body).get("data", {}).get("result", []) if status == 200 else []
                return bool(result) and float(result[0]["value"][1]) == 25.0

            wait_until(
                scraped, 30, "Prometheus to scrape sensorcast_forecasts_produced_total", poll=0.25
            )
        finally:
            proc.terminate()
            proc.wait(10)
