"""SASL logins on both clients, over TLS, through `SaslGate` in front of the embedded broker
(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; the password from a file or from the environment); a
wrong password and a mechanism the broker lacks refused in one line; the embedded broker's
own ``--authentication`` refusing a SCRAM login; and the password in no line the service
or the tools print, at DEBUG, through a refused login and a successful run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import KafkaSettings, ServiceSettings
from service.embedded import EmbeddedBroker, free_port
from service.testing import add_sensor_lstm
from service.testing.sasl import SaslGate
from service.testing.tls import Certificates, SecuredBroker, make_certificates
from service.tools.processes import ServeProcess
from service.tools.replay import make_producer
from tests.conftest import KafkaKit
from tests.integration.securekit import forecasts, refusal
from tests.integration.servicekit import CLIENTS, reading, running, settings_for

USER = "sensorcast-svc"
#: Known, and unlike anything else a log line could hold, so that a search finds only it.
PASSWORD = "Pw-leakcheck-7f3a9c1e"
N_STREAMS = 8


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("sasl-tls"))


@pytest.fixture(scope="module")
def gate() -> SaslGate:
    return SaslGate({USER: PASSWORD})


@pytest.fixture(scope="module")
def sasl_broker(certs: Certificates, gate: SaslGate) -> Iterator[SecuredBroker]:
    with SecuredBroker(certs, authenticate=gate) as secured:
        yield secured
        # the terminator first: with the clients' connections closed, the broker stops at
        # once instead of waiting them out (5 s)
        secured.relay.stop()


def _sasl(certs: Certificates, mechanism: str, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "kafka.security_protocol": "SASL_SSL",
        "kafka.ssl_cafile": str(certs.ca),
        "kafka.sasl_mechanism": mechanism,
        "kafka.sasl_username": USER,
        "kafka.sasl_password": password,
    }


def _service(broker: str, tmp_path: Path, client: str, **more: Any) -> ServiceSettings:
    model = add_sensor_lstm(tmp_path / "models")
    names = KafkaKit(broker, tmp_path.name)  # names only: opens no client
    return settings_for(
        broker, model.registry, model.card.name, names.name, **{"kafka.client": client}, **more
    )


def _produce(kafka: KafkaSettings, topic: str) -> None:
    producer = make_producer(kafka)
    try:
        for i in range(N_STREAMS):
            sid = f"sasl-{i}"
            value = reading(
                sid, 1_700_000_000.0, {"temp": 20.0, "pressure": 101.0, "vibration": 0.5}
            )
            producer.send(topic, key=sid.encode(), value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("client", CLIENTS)
def test_service_logs_in_and_forecasts(
    sasl_broker: SecuredBroker,
    certs: Certificates,
    gate: SaslGate,
    tmp_path: Path,
    client: str,
    mechanism: str,
) -> None:
    secret = tmp_path / "password"  # a mounted Secret ends without a newline; an echo with one
    secret.write_text(PASSWORD + "\n")
    security = _sasl(certs, mechanism, password="not-this-one")
    security["kafka.sasl_password_file"] = str(secret)  # wins over kafka.sasl_password
    settings = _service(sasl_broker.bootstrap, tmp_path, client, **security)
    before = gate.logins[USER]
    with running(settings) as svc:
        svc.wait_ready()
        _produce(settings.kafka, settings.kafka.input_topic)
        views = forecasts(settings.kafka, settings.kafka.output_topic, N_STREAMS)
    assert sorted(v.stream_id for v in views) == sorted(f"sasl-{i}" for i in range(N_STREAMS))
    assert gate.logins[USER] > before  # through the gate, not around it


@pytest.mark.parametrize("client", CLIENTS)
def test_a_wrong_password_is_refused_in_one_line(
    sasl_broker: SecuredBroker, certs: Certificates, tmp_path: Path, client: str
) -> None:
    settings = _service(
        sasl_broker.bootstrap, tmp_path, client, **_sasl(certs, "SCRAM-SHA-512", "wrong")
    )
    message, seconds = refusal(settings)
    assert "\n" not in message and seconds < 20
    assert f"the broker refused the SASL login of {USER!r} (SCRAM-SHA-512)" in message
    assert "invalid credentials" in message and "wrong" not in message


def test_a_mechanism_the_broker_lacks_is_named(certs: Certificates, tmp_path: Path) -> None:
    with SecuredBroker(certs, authenticate=SaslGate({USER: PASSWORD}, ["PLAIN"])) as plain_only:
        settings = _service(
            plain_only.bootstrap, tmp_path, "kafka-python", **_sasl(certs, "SCRAM-SHA-256")
        )
        message, _ = refusal(settings)
    assert "the broker does not offer SASL SCRAM-SHA-256: it offers PLAIN" in message


@pytest.mark.parametrize("client", CLIENTS)
def test_the_embedded_broker_with_authentication_refuses_an_unknown_scram_user(
    tmp_path: Path, client: str
) -> None:
    """Tansu's own SCRAM: it runs the exchange and answers ``unknown-user`` (its memory
    storage keeps no user, see `service.testing.sasl`)."""
    with EmbeddedBroker(authentication=True) as broker:
        security = {
            "kafka.security_protocol": "SASL_PLAINTEXT",
            "kafka.sasl_mechanism": "SCRAM-SHA-256",
            "kafka.sasl_username": USER,
            "kafka.sasl_password": PASSWORD,
        }
        message, seconds = refusal(_service(broker.bootstrap, tmp_path, client, **security))
    assert seconds < 30
    assert f"the broker refused the SASL login of {USER!r} (SCRAM-SHA-256): unknown-user" in (
        message
    )


# -- no leak ----------------------------------------------------------------------------------


def _env(settings: ServiceSettings, port: int, password: str) -> dict[str, str]:
    """The service configured through its environment, at DEBUG, its password included."""
    k = settings.kafka
    env = {name: value for name, value in os.environ.items() if not name.startswith("SENSORCAST_")}
    env.update(
        {
            "SENSORCAST_KAFKA__CLIENT": k.client,
            "SENSORCAST_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
            "SENSORCAST_KAFKA__INPUT_TOPIC": k.input_topic,
            "SENSORCAST_KAFKA__OUTPUT_TOPIC": k.output_topic,
            "SENSORCAST_KAFKA__DEAD_LETTER_TOPIC": k.dead_letter_topic,
            "SENSORCAST_KAFKA__GROUP_ID": k.group_id,
            "SENSORCAST_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "SENSORCAST_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
            "SENSORCAST_KAFKA__COMMIT_INTERVAL": "0.5",
            "SENSORCAST_KAFKA__SECURITY_PROTOCOL": k.security_protocol,
            "SENSORCAST_KAFKA__SSL_CAFILE": str(k.ssl_cafile),
            "SENSORCAST_KAFKA__SASL_MECHANISM": str(k.sasl_mechanism),
            "SENSORCAST_KAFKA__SASL_USERNAME": USER,
            "SENSORCAST_KAFKA__SASL_PASSWORD": password,
            "SENSORCAST_MODEL__REGISTRY": str(settings.model.registry),
            "SENSORCAST_MODEL__NAME": settings.model.name,
            "SENSORCAST_HTTP__HOST": "127.0.0.1",
            "SENSORCAST_HTTP__PORT": str(port),
            "SENSORCAST_LOG__LEVEL": "DEBUG",
        }
    )
    return env


def _cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "-v", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("client", CLIENTS)
def test_the_password_is_in_no_line_printed_at_debug(
    sasl_broker: SecuredBroker, certs: Certificates, tmp_path: Path, client: str
) -> None:
    settings = _service(sasl_broker.bootstrap, tmp_path, client, **_sasl(certs, "SCRAM-SHA-256"))
    printed: dict[str, str] = {}

    # refused logins: by the gate (found before the clients connect) and by the embedded
    # broker's own SCRAM (found after the clients failed, their DEBUG lines printed)
    wrong = "Wrong-" + PASSWORD
    refused = _cli(_env(settings, free_port(), wrong), "serve")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "refused the SASL login" in refused.stderr.splitlines()[-1]
    printed["serve refused by the gate"] = refused.stdout + refused.stderr
    with EmbeddedBroker(authentication=True) as tansu:
        env = _env(settings, free_port(), PASSWORD)
        env["SENSORCAST_KAFKA__BOOTSTRAP_SERVERS"] = tansu.bootstrap
        env["SENSORCAST_KAFKA__SECURITY_PROTOCOL"] = "SASL_PLAINTEXT"
        del env["SENSORCAST_KAFKA__SSL_CAFILE"]
        refused = _cli(env, "serve")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "unknown-user" in refused.stderr.splitlines()[-1]
    printed["serve refused by the broker"] = refused.stdout + refused.stderr

    # a successful run: connected, readings in, forecasts out, a checkpoint, SIGTERM
    port = free_port()
    env = _env(settings, port, PASSWORD)
    log_path = tmp_path / "serve.log"
    with ServeProcess(env, log_path, port) as serve:
        serve.wait_ready(60, threading.Event())
        _produce(settings.kafka, settings.kafka.input_topic)
        assert len(forecasts(settings.kafka, settings.kafka.output_topic, N_STREAMS)) >= N_STREAMS
    assert serve.proc.returncode == 0
    printed["serve"] = log_path.read_text()
    assert "connected client=" in printed["serve"] and " DEBUG " in printed["serve"]

    # the tools and the settings, with the same environment
    replayed = _cli(env, "replay", "--topic", settings.kafka.input_topic, "--streams", "3", "-q")
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    printed["replay"] = replayed.stdout + replayed.stderr
    tailed = _cli(
        env, "tail", "--topic", settings.kafka.output_topic, "--from-beginning", "--max", "3"
    )
    assert tailed.returncode == 0, tailed.stderr[-2000:]
    printed["tail"] = tailed.stdout + tailed.stderr
    effective = _cli(env, "settings", "--effective")
    assert json.loads(effective.stdout)["kafka"]["sasl_password"] == "**********"
    printed["settings"] = effective.stdout + effective.stderr

    for what, text in printed.items():
        assert text.strip(), f"{what} printed nothing"
        leaks = [line for line in text.splitlines() if PASSWORD in line]
        assert not leaks, f"{what} printed the password: {leaks[0][:300]}"
