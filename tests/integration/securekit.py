"""Helpers for the TLS and SASL integration tests: forecasts read back with `sensorcast
tail`'s reader on secured settings, and the one-line refusal a service stops with."""

from __future__ import annotations

import threading
import time

import pytest

from service.config import KafkaSettings, ServiceSettings
from service.errors import ConfigError
from service.tools.tail import ForecastView, follow
from tests.integration.servicekit import RunningService


def forecasts(kafka: KafkaSettings, topic: str, n: int, timeout: float = 60) -> list[ForecastView]:
    """The first `n` forecasts on `topic` (fewer if none comes for `timeout` seconds)."""
    got: list[ForecastView] = []
    stop = threading.Event()

    def keep(view: ForecastView) -> None:
        got.append(view)
        if len(got) >= n:
            stop.set()

    follow(kafka, topic, keep, from_beginning=True, stop=stop, idle_timeout=timeout)
    return got


def refusal(settings: ServiceSettings, timeout: float = 30) -> tuple[str, float]:
    """The `ConfigError` message a service stops with, and how many seconds that took; a
    service still retrying after `timeout` seconds fails the test."""
    started = time.monotonic()
    svc = RunningService(settings).start()
    try:
        with pytest.raises(ConfigError) as caught:
            svc.join(timeout)
    finally:
        if svc.error is None and svc.exit_code is None:
            svc.stop()
    return str(caught.value), time.monotonic() - started
