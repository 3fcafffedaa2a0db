"""The security settings mapped onto each client library's own options, once per library,
and every consumer, producer and admin client the service and the tools open built with
them; the password reaches kafka-python as text whose repr is masked."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest

from service.config import KafkaSettings
from service.kafka.security import MaskedStr, kafka_python_options, librdkafka_options
from service.testing.tls import Certificates, make_certificates
from service.transport import RebalanceHandler

PASSWORD = "Pw-map-51c0ad"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def secured(certs: Certificates) -> KafkaSettings:
    """SASL_SSL with SCRAM and mutual TLS, on a port where nothing listens (the tools' TLS
    check before connecting finds nothing there and lets them go on)."""
    return KafkaSettings(
        bootstrap_servers="127.0.0.1:1",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password=PASSWORD,  # type: ignore[arg-type]
        ssl_cafile=certs.ca,
        ssl_certfile=certs.client_cert,
        ssl_keyfile=certs.client_key,
        ssl_check_hostname=False,
    )


def test_plaintext_maps_to_the_protocol_alone() -> None:
    assert kafka_python_options(KafkaSettings()) == {"security_protocol": "PLAINTEXT"}
    assert librdkafka_options(KafkaSettings()) == {"security.protocol": "PLAINTEXT"}


def test_sasl_ssl_maps_onto_kafka_python_options(
    secured: KafkaSettings, certs: Certificates
) -> None:
    options = kafka_python_options(secured)
    assert options == {
        "security_protocol": "SASL_SSL",
        "ssl_check_hostname": False,
        "ssl_cafile": str(certs.ca),
        "ssl_certfile": str(certs.client_cert),
        "ssl_keyfile": str(certs.client_key),
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "svc",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(options["sasl_plain_password"], MaskedStr)
    assert PASSWORD not in repr(options) and PASSWORD not in f"{options}"
    assert PASSWORD.encode() == options["sasl_plain_password"].encode()  # what SCRAM hashes


def test_sasl_ssl_maps_onto_librdkafka_options(secured: KafkaSettings, certs: Certificates) -> None:
    assert librdkafka_options(secured) == {
        "security.protocol": "SASL_SSL",
        "ssl.endpoint.identification.algorithm": "none",
        "ssl.ca.location": str(certs.ca),
        "ssl.certificate.location": str(certs.client_cert),
        "ssl.key.location": str(certs.client_key),
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "svc",
        "sasl.password": PASSWORD,
    }


def test_tls_without_files_checks_host_names_against_the_system_cas() -> None:
    tls = KafkaSettings(security_protocol="SSL")
    assert kafka_python_options(tls) == {"security_protocol": "SSL", "ssl_check_hostname": True}
    assert librdkafka_options(tls) == {
        "security.protocol": "SSL",
        "ssl.endpoint.identification.algorithm": "https",
    }


def test_sasl_plaintext_has_no_tls_options() -> None:
    plain = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="svc",
        sasl_password=PASSWORD,  # type: ignore[arg-type]
    )
    assert set(kafka_python_options(plain)) == {
        "security_protocol",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
    }
    assert set(librdkafka_options(plain)) == {
        "security.protocol",
        "sasl.mechanism",
        "sasl.username",
        "sasl.password",
    }


def test_the_password_file_is_read_when_the_options_are_built(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("first\n")
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="svc",
        sasl_password_file=secret,
    )
    assert kafka_python_options(settings)["sasl_plain_password"] == "first"
    secret.write_text("rotated")  # a Kubernetes Secret updated in place
    assert librdkafka_options(settings)["sasl.password"] == "rotated"


def test_the_masked_password_stays_out_of_kafka_pythons_debug_lines(
    secured: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """kafka-python logs an admin client's whole configuration at DEBUG."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    caplog.set_level(logging.DEBUG, logger="kafka")
    with pytest.raises(KafkaError):
        KafkaAdminClient(
            bootstrap_servers="127.0.0.1:1",
            bootstrap_timeout_ms=200,
            **kafka_python_options(secured),
        )
    assert "Starting KafkaAdminClient with configuration" in caplog.text
    assert "'sasl_plain_password': '**********'" in caplog.text
    assert PASSWORD not in caplog.text


# -- every client is built with the mapping ---------------------------------------------------


class _Built:
    """Stand-in client classes that record the options each client was built with."""

    def __init__(self) -> None:
        self.options: dict[str, dict[str, Any]] = {}

    def kafka_python(self, role: str) -> Any:
        def build(*args: Any, **options: Any) -> MagicMock:
            self.options[role] = options
            return MagicMock()

        return build

    def librdkafka(self, role: str) -> Any:
        def build(config: dict[str, Any]) -> MagicMock:
            self.options[role] = config
            return MagicMock()

        return build


def _has(options: dict[str, Any], expected: dict[str, Any]) -> bool:
    return all(options.get(key) == value for key, value in expected.items())


def test_every_kafka_python_client_of_the_service_is_secured(
    secured: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.kafka.changelog as changelog
    import service.kafka.connect as connect
    import service.kafka.sink as sink
    import service.kafka.source as source

    built = _Built()
    monkeypatch.setattr(sink, "KafkaProducer", built.kafka_python("sink"))
    monkeypatch.setattr(source, "KafkaConsumer", built.kafka_python("source"))
    monkeypatch.setattr(changelog, "KafkaProducer", built.kafka_python("changelog writer"))
    monkeypatch.setattr(changelog, "KafkaConsumer", built.kafka_python("changelog reader"))
    monkeypatch.setattr(connect, "KafkaAdminClient", built.kafka_python("admin"))
    connect.KafkaTransport(secured).open(secured, MagicMock(spec=RebalanceHandler))
    assert sorted(built.options) == [
        "admin",
        "changelog reader",
        "changelog writer",
        "sink",
        "source",
    ]
    expected = kafka_python_options(secured)
    for role, options in built.options.items():
        assert _has(options, expected), role


def test_every_confluent_client_of_the_service_is_secured(
    secured: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("confluent_kafka")
    import service.kafka.confluent.connect as connect
    from service.kafka.confluent.changelog import (
        ConfluentChangelogReader,
        ConfluentChangelogWriter,
    )
    from service.kafka.confluent.sink import ConfluentSink
    from service.kafka.confluent.source import ConfluentSource

    built = _Built()
    monkeypatch.setattr(connect, "AdminClient", built.librdkafka("admin"))
    monkeypatch.setattr(connect, "_ensure", lambda admin, **plan: {})
    connect.ensure_topics(secured, ["out"])
    ConfluentSink(secured, built.librdkafka("sink"))
    ConfluentSource(secured, MagicMock(spec=RebalanceHandler), built.librdkafka("source"))
    ConfluentChangelogWriter(secured, producer=built.librdkafka("changelog writer"))
    ConfluentChangelogReader(secured, consumer=built.librdkafka("changelog reader"))
    assert len(built.options) == 5
    expected = librdkafka_options(secured)
    for role, options in built.options.items():
        assert _has(options, expected), role


def test_the_tools_clients_are_secured(
    secured: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kafka

    from service.tools.demo import _create_topics, _Topics
    from service.tools.replay import make_producer
    from service.tools.tail import _consumer

    built = _Built()
    monkeypatch.setattr(kafka, "KafkaProducer", built.kafka_python("replay"))
    monkeypatch.setattr(kafka, "KafkaConsumer", built.kafka_python("tail"))
    monkeypatch.setattr(kafka, "KafkaAdminClient", built.kafka_python("demo topics"))
    make_producer(secured)
    _consumer(secured)
    _create_topics(secured, _Topics.named(""))
    assert sorted(built.options) == ["demo topics", "replay", "tail"]
    expected = kafka_python_options(secured)
    for role, options in built.options.items():
        assert _has(options, expected), role
