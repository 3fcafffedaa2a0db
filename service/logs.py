"""Log set-up for the service: one line per event, as text or as one JSON object a line."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

__all__ = ["JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "message": ...}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON object, with its traceback under ``exception`` if any."""
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Send the root logger's records to stderr in `fmt` (``text`` or ``json``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # kafka-python logs every failed connection attempt, several lines a second while a
    # broker is down; the service's own lines name the broker, the error and the retry.
    # Its lines, and librdkafka's (the confluent-kafka client), are shown at DEBUG.
    quiet = logging.DEBUG if level == "DEBUG" else logging.CRITICAL
    logging.getLogger("kafka").setLevel(quiet)
    logging.getLogger("service.kafka.confluent.librdkafka").setLevel(quiet)
