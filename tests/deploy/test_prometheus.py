"""deploy/prometheus: promtool accepts the rules and the config, the alert unit tests pass, and
every alert is actionable and names only metrics the service exposes."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deploykit import DEPLOY, exposed_series, load_yaml, metric_names, promtool

PROMETHEUS = DEPLOY / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
RECORDING = PROMETHEUS / "rules.yml"

# What an operator must be told about; each name maps to the situation it covers.
REQUIRED_ALERTS = {
    "SensorcastDown": "a replica is down",
    "SensorcastConsumerLagGrowing": "consumer lag growing",
    "SensorcastNoForecasts": "no forecasts while readings arrive",
    "SensorcastRejectRateHigh": "reject rate high",
    "SensorcastModelCallLatencyHigh": "model-call latency p99 high",
    "SensorcastEvictionsAtCapacity": "evictions at the capacity cap",
    "SensorcastNotReady": "not ready for long (restore, broker, assignment)",
}
# Series Prometheus itself records for every target.
PROMETHEUS_SERIES = {"up"}

needs_promtool = pytest.mark.skipif(
    promtool() is None, reason="promtool not installed (Debian package `prometheus`)"
)


def _rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def _recorded() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RECORDING)["groups"] for rule in group["rules"]]


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    tool = promtool()
    assert tool is not None
    return subprocess.run(
        [tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_check_recording_rules() -> None:
    result = _promtool("check", "rules", str(RECORDING))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_recorded())} rules found" in result.stdout


@pytest.mark.parametrize("rule", _recorded(), ids=lambda r: r["record"])
def test_recording_rule_uses_only_exposed_metrics_and_is_named_by_convention(
    rule: dict[str, Any],
) -> None:
    assert not metric_names(rule["expr"]) - exposed_series(), rule["expr"]
    level, name, operation = rule["record"].split(":")  # level:metric:operations
    assert set(level.split("_")) <= {"model", "target", "step"} and name.startswith("sensorcast_")
    assert operation == "rate5m"


@needs_promtool
def test_promtool_check_config_resolves_the_rule_file(tmp_path: Path) -> None:
    result = _promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout
    # The same config without alerts.yml beside it must fail: the path is really resolved.
    (tmp_path / "prometheus.yml").write_text((PROMETHEUS / "prometheus.yml").read_text())
    broken = _promtool("check", "config", str(tmp_path / "prometheus.yml"), cwd=tmp_path)
    assert broken.returncode != 0


@needs_promtool
def test_alert_unit_tests_pass() -> None:
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_unit_tests_cover_several_alerts() -> None:
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert len(fired) >= 8, fired
    assert fired <= {rule["alert"] for rule in _rules()}


def test_required_alerts_exist() -> None:
    names = [rule["alert"] for rule in _rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    missing = set(REQUIRED_ALERTS) - set(names)
    assert not missing, missing


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_alert_is_actionable(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in ("critical", "warning", "info")
    annotations = rule["annotations"]
    for key in ("summary", "description", "runbook"):
        assert len(annotations.get(key, "").strip()) > 10, f"{rule['alert']}: {key}"
    assert rule.get("for"), f"{rule['alert']}: a `for` keeps one bad scrape from paging"


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_alert_uses_only_exposed_metrics(rule: dict[str, Any]) -> None:
    used = metric_names(rule["expr"])
    assert used, rule["expr"]
    recorded = {r["record"] for r in _recorded()}
    unknown = used - exposed_series() - PROMETHEUS_SERIES - recorded
    assert not unknown, f"{rule['alert']} uses metrics the service does not expose: {unknown}"


def test_prometheus_scrapes_the_service_http_port() -> None:
    from service.config import ServiceSettings

    config = load_yaml(PROMETHEUS / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["sensorcast"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    ports = {sd["port"] for sd in job["dns_sd_configs"]}
    assert ports == {ServiceSettings().http.port}
    assert config["rule_files"] == ["alerts.yml", "rules.yml"]


def test_prometheusrule_matches_alerts_and_rules_files() -> None:
    rule = load_yaml(DEPLOY / "k8s" / "prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == load_yaml(ALERTS)["groups"] + load_yaml(RECORDING)["groups"]
