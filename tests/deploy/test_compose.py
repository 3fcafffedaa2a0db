"""deploy/compose.yaml: parses, wires Kafka's listeners right, and hands the service and the
replay job only settings, ports, files and flags that exist."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from typing import Any

import pytest

from service.cli import build_parser
from service.config import ServiceSettings, load_settings
from tests.deploy.deploykit import DEPLOY, REPO, load_yaml, sensorcast_env, setting_env_names

COMPOSE = DEPLOY / "compose.yaml"


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _env(service: str) -> dict[str, str]:
    env = _services()[service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _listeners(text: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in text.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def test_stack_has_every_part() -> None:
    services = _services()
    for name in ("kafka", "topics", "sensorcast", "replay", "prometheus", "grafana"):
        assert name in services, name
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["sensorcast"]["deploy"]["replicas"] == 2


def test_kafka_runs_kraft_with_consistent_listeners() -> None:
    env = _env("kafka")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert set(listeners) == set(protocols)
    assert controller in listeners and controller not in advertised
    assert set(advertised) <= set(listeners)
    for name, (_host, port) in advertised.items():
        assert listeners[name][1] == port, name
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    node, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert node == env["KAFKA_NODE_ID"]
    host, port = voter.split(":")
    assert host == "kafka" and int(port) == listeners[controller][1]
    # Single node: internal topics cannot have more than one replica.
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    # The host listener is published on the same port it advertises.
    host_name = next(n for n, (h, _) in advertised.items() if h == "localhost")
    published = advertised[host_name][1]
    assert f"{published}:{published}" in _services()["kafka"]["ports"]


@pytest.mark.parametrize("service", ["sensorcast", "replay"])
def test_clients_use_the_in_network_listener(service: str) -> None:
    kafka = _env("kafka")
    in_network = {
        f"{h}:{p}"
        for h, p in _listeners(kafka["KAFKA_ADVERTISED_LISTENERS"]).values()
        if h == "kafka"
    }
    assert _env(service)["SENSORCAST_KAFKA__BOOTSTRAP_SERVERS"] in in_network


def test_topics_job_uses_the_in_network_listener_and_service_topics() -> None:
    command = " ".join(_services()["topics"]["command"])
    kafka = _env("kafka")
    internal = next(
        f"{h}:{p}"
        for h, p in _listeners(kafka["KAFKA_ADVERTISED_LISTENERS"]).values()
        if h == "kafka"
    )
    assert f"--bootstrap-server {internal}" in command
    env = _env("sensorcast")
    for key in ("INPUT_TOPIC", "OUTPUT_TOPIC", "DEAD_LETTER_TOPIC"):
        assert env[f"SENSORCAST_KAFKA__{key}"] in command, key
    assert f"{env['SENSORCAST_KAFKA__GROUP_ID']}.state" in command
    assert "cleanup.policy=compact" in command
    partitions = set(re.findall(r"--partitions (\d+)", command))
    assert partitions == {env["SENSORCAST_KAFKA__PARTITIONS"]}


@pytest.mark.parametrize("service", ["sensorcast", "replay"])
def test_sensorcast_settings_exist_and_are_valid(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = sensorcast_env(_env(service))
    assert env
    unknown = set(env) - setting_env_names()
    assert not unknown, f"not a ServiceSettings variable: {unknown}"
    for key in list(os.environ):
        if key.startswith("SENSORCAST_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    load_settings()  # raises ConfigError on an invalid value


def test_service_port_matches_http_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env("sensorcast")
    port = int(env.get("SENSORCAST_HTTP__PORT", ServiceSettings().http.port))
    assert str(port) in [str(p) for p in _services()["sensorcast"]["expose"]]
    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "sensorcast")
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["sensorcast"] and sd["port"] == port


def test_stop_grace_period_covers_the_final_checkpoint() -> None:
    defaults = ServiceSettings().kafka
    env = _env("sensorcast")
    shutdown = float(env.get("SENSORCAST_KAFKA__SHUTDOWN_TIMEOUT", defaults.shutdown_timeout))
    checkpoint = float(env.get("SENSORCAST_KAFKA__CHECKPOINT_TIMEOUT", defaults.checkpoint_timeout))
    grace = _services()["sensorcast"]["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) > shutdown + checkpoint


def test_mounted_files_exist() -> None:
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).resolve().exists(), f"{name}: {source}"
                assert (DEPLOY / source).resolve().is_relative_to(REPO), f"{name}: {source}"
            else:
                assert source in _compose()["volumes"], f"{name}: undeclared volume {source}"


def test_build_points_at_the_dockerfile() -> None:
    for name in ("sensorcast", "replay"):
        build = _services()[name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == REPO
        assert (context / build["dockerfile"]).is_file()


def test_dependencies_are_defined_services() -> None:
    services = _services()
    for name, service in services.items():
        for dep in service.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"


def test_replay_script_is_valid_shell_and_a_valid_replay_command() -> None:
    script = DEPLOY / "replay.sh"
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=10)
    text = script.read_text()
    command = re.search(r"^\s*sensorcast replay (.*?)(?<!\\)$", text, re.S | re.M)
    assert command, "replay.sh runs `sensorcast replay`"
    joined = re.sub(r"\\\n", " ", text[command.start() :].split("\n    start=")[0])
    argv = shlex.split(re.sub(r'"\$\{(\w+)\}"', r"\1", joined))
    placeholders = {"streams": "5", "steps": "10", "period": "300", "start": "0", "rate": "1"}
    argv = [placeholders.get(a, a) for a in argv]
    args = build_parser().parse_args(argv[1:])
    assert args.handler.__name__ == "_cmd_replay"
    assert args.source == "synthetic"
    mount = _services()["replay"]["volumes"][0].split(":")
    assert mount[0] == "./replay.sh"
    assert _services()["replay"]["entrypoint"] == ["/bin/sh", mount[1]]
