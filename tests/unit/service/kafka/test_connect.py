"""Choosing the Kafka client: confluent-kafka selected but not installed is one clear
ConfigError saying what to install, before anything else starts."""

from __future__ import annotations

import sys

import pytest

from service import cli
from service.config import KafkaSettings
from service.errors import ConfigError
from service.kafka.connect import check_client


@pytest.fixture
def no_confluent(monkeypatch: pytest.MonkeyPatch) -> None:
    # a None entry makes `import confluent_kafka` raise ImportError
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)


def test_kafka_python_needs_nothing_more(no_confluent: None) -> None:
    check_client(KafkaSettings())


@pytest.mark.usefixtures("no_confluent")
def test_confluent_without_the_package_says_what_to_install() -> None:
    with pytest.raises(ConfigError, match=r"pip install 'sensorcast\[confluent\]'"):
        check_client(KafkaSettings(client="confluent"))


@pytest.mark.usefixtures("no_confluent")
def test_serve_ends_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["serve", "--kafka-client", "confluent", "--http-port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err == [
        "sensorcast: error: kafka.client=confluent needs the confluent-kafka package: "
        "pip install 'sensorcast[confluent]' (or set kafka.client=kafka-python)"
    ]


def test_an_unknown_client_is_refused() -> None:
    with pytest.raises(ValueError, match="kafka-python"):
        KafkaSettings(client="librdkafka")  # type: ignore[arg-type]
