"""deploy/compose.yaml: parses, wires Kafka's listeners right, and hands the service and the
replay job only settings, ports, files and flags that exist."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
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


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    """The Compose Specification's schema (vendored by check-jsonschema), offline."""
    pytest.importorskip("check_jsonschema")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # and it can fail: a misspelt key is reported
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(broken)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "stop_grace_periods" in result.stdout + result.stderr


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
    changelog = env.get("SENSORCAST_KAFKA__CHANGELOG_TOPIC") or (
        f"{env['SENSORCAST_KAFKA__GROUP_ID']}.state"
    )
    assert f"--topic {changelog} " in command
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


def _replay_argv() -> list[str]:
    """The `sensorcast replay` command line of replay.sh, shell variables as their names."""
    lines = (DEPLOY / "replay.sh").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("sensorcast replay"))
    command = []
    for line in lines[first:]:
        command.append(line.strip().removesuffix("\\").removesuffix("&"))
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(re.sub(r'"\$\{(\w+)\}"', r"\1", " ".join(command)))


def test_replay_script_runs_a_valid_replay_command() -> None:
    subprocess.run(["sh", "-n", str(DEPLOY / "replay.sh")], check=True, timeout=10)
    argv = _replay_argv()
    assert argv[:3] == ["sensorcast", "replay", "synthetic"]
    placeholders = {"streams": "5", "steps": "10", "period": "300", "start": "0", "rate": "1"}
    args = build_parser().parse_args([placeholders.get(a, a) for a in argv[1:]])
    assert args.handler.__name__ == "_cmd_replay"
    assert (args.streams, args.steps, args.period, args.rate) == (5, 10, 300.0, 1.0)
    mount = _services()["replay"]["volumes"][0].split(":")
    assert mount[0] == "./replay.sh"
    assert _services()["replay"]["entrypoint"] == ["/bin/sh", mount[1]]
    # The replay runs no HTTP server, so the image's /healthz check must not mark it unhealthy.
    assert _services()["replay"]["healthcheck"] == {"disable": True}


def _stub_sensorcast(bin_dir: Path, body: str) -> dict[str, str]:
    bin_dir.mkdir()
    stub = bin_dir / "sensorcast"
    stub.write_text("#!/bin/sh\n" + body)
    stub.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "REPLAY_DAYS": "120"}


def test_replay_passes_are_contiguous_and_stop_at_the_present(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    env = _stub_sensorcast(tmp_path / "bin", f'echo "$@" >> {calls}\n')
    subprocess.run(["sh", str(DEPLOY / "replay.sh")], env=env, check=True, timeout=30)
    passes = [line.split() for line in calls.read_text().splitlines()]
    starts = [int(p[p.index("--start-ts") + 1]) for p in passes]
    steps = int(passes[0][passes[0].index("--steps") + 1])
    period = int(passes[0][passes[0].index("--period") + 1])
    assert steps * period == 120 * 86_400
    assert len(passes) == 3  # 365 days back, 120 days a pass
    assert all(b - a == steps * period for a, b in itertools.pairwise(starts))
    assert starts[-1] + steps * period <= time.time() < starts[-1] + 2 * steps * period


def test_replay_script_passes_sigterm_to_the_replay(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    env = _stub_sensorcast(tmp_path / "bin", f"echo $$ > {pid_file}\nexec sleep 60\n")
    shell = subprocess.Popen(["sh", str(DEPLOY / "replay.sh")], env=env)
    try:
        deadline = time.monotonic() + 10
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < deadline, "the stub replay never started"
            time.sleep(0.01)
        child = int(pid_file.read_text())
        shell.send_signal(signal.SIGTERM)
        assert shell.wait(timeout=10) == 143
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
