"""Log set-up: one line per event, text or JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from service.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    kafka_level = logging.getLogger("kafka").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(kafka_level)


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "INFO")
    logging.getLogger("service.app").warning(
        "dead letter reason=%s topic=%s partition=%d offset=%d", "not_json", "in", 2, 41
    )
    logging.getLogger("service.app").debug("not shown")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "WARNING" and entry["logger"] == "service.app"
    assert entry["message"] == "dead letter reason=not_json topic=in partition=2 offset=41"
    assert entry["ts"].endswith("+00:00")


def test_text_lines_and_quiet_kafka_client(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("text", "INFO")
    logging.getLogger("kafka.net.manager").error("Connection failed: ECONNREFUSED")
    logging.getLogger("service.app").info("connected bootstrap=%s", "k:9092")
    err = capsys.readouterr().err
    assert "ECONNREFUSED" not in err
    (line,) = err.strip().splitlines()
    assert line.endswith("INFO service.app connected bootstrap=k:9092")


def test_debug_shows_the_kafka_client(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("text", "DEBUG")
    logging.getLogger("kafka.net.manager").debug("bootstrap attempt")
    assert "bootstrap attempt" in capsys.readouterr().err
