"""What the service asks of the broker, counted by a wiretap in front of a fresh embedded
broker (`service.testing.wiretap`): idle, a bounded trickle of requests; under light load,
one fetch per ``kafka.fetch_pause_ms`` at most and the forecasts of a micro-batch sent at
once, not a request per reading or per broker round trip."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.testing import add_sensor_lstm
from service.testing.wiretap import API_NAMES, Tally, TappedBroker
from tests.conftest import KafkaKit
from tests.integration.servicekit import CLIENTS, RunningService, reading, settings_for, wait_until

pytestmark = pytest.mark.broker

VALUES = {"temp": 20.0, "pressure": 101.0, "vibration": 0.5}
FETCH, PRODUCE, METADATA = (
    next(k for k, v in API_NAMES.items() if v == name) for name in ("Fetch", "Produce", "Metadata")
)


@pytest.fixture(scope="module")
def tapped() -> Iterator[TappedBroker]:
    with TappedBroker() as broker:
        yield broker
        # the wiretap first: with the clients' connections closed, the broker stops at once
        # instead of waiting them out (5 s)
        broker.relay.stop()


def _service_roles(tally: Tally, client_id: str) -> list[str]:
    return [r for r in tally.roles() if r.split("/")[0].startswith(client_id)]


def _rate(tally: Tally, roles: list[str], api: int) -> float:
    return sum(tally.rate(role, api) for role in roles)


def _serve(
    tapped: TappedBroker, tmp_path: Path, client: str, **overrides: object
) -> tuple[RunningService, KafkaKit]:
    kit = KafkaKit(tapped.bootstrap, f"requests-{client}")
    model = add_sensor_lstm(tmp_path / "models")
    settings = settings_for(
        tapped.bootstrap,
        model.registry,
        model.card.name,
        kit.name,
        **{"kafka.client": client, "kafka.client_id": kit.name("svc"), **overrides},
    )
    svc = RunningService(settings).start()
    svc.wait_ready()
    return svc, kit


@pytest.mark.parametrize("client", CLIENTS)
def test_an_idle_service_sends_a_bounded_trickle_of_requests(
    tapped: TappedBroker, tmp_path: Path, client: str
) -> None:
    svc, kit = _serve(tapped, tmp_path, client)
    try:
        topic = svc.settings.kafka.input_topic
        kit.produce(topic, [(f"s{i}", reading(f"s{i}", 1_700_000_000.0, VALUES)) for i in range(8)])
        kit.consume_until(svc.settings.kafka.output_topic, 8)
        wait_until(
            lambda: svc.metric("sensorcast_changelog_records_total", {"kind": "state"}) >= 8,
            20,
            "the states written",
        )
        tapped.wiretap.reset()
        time.sleep(3.0)
        tally = tapped.wiretap.snapshot()
    finally:
        assert svc.stop() == 0
        kit.close()
    roles = _service_roles(tally, svc.settings.kafka.client_id)
    fetches = _rate(tally, roles, FETCH)
    max_wait_ms = svc.settings.kafka.max_wait_ms
    # idle fetches wait at the broker (``kafka.max_wait_ms``); a busy loop would send hundreds
    assert 0 < fetches <= 2 * 1000 / max_wait_ms
    assert _rate(tally, roles, METADATA) <= 1.0
    assert _rate(tally, roles, PRODUCE) == 0  # nothing to send: no forecasts, no states
    assert tally.per_second(roles) <= 4 * 1000 / max_wait_ms


@pytest.mark.parametrize("client", CLIENTS)
def test_under_light_load_fetches_are_paced_and_forecasts_sent_per_micro_batch(
    tapped: TappedBroker, tmp_path: Path, client: str
) -> None:
    pause_ms = 50  # far above a fetch's round trip, so that an unpaced service shows
    svc, kit = _serve(
        tapped, tmp_path, client, **{"kafka.fetch_pause_ms": pause_ms, "kafka.commit_interval": 60}
    )
    stop = threading.Event()
    topic = svc.settings.kafka.input_topic

    def trickle() -> None:  # about 300 readings a second over 30 streams, one at a time
        step = 0
        while not stop.is_set():
            ts = 1_700_000_000.0 + 300.0 * step
            for i in range(30):
                if stop.is_set():
                    return
                kit.produce(topic, [(f"s{i}", reading(f"s{i}", ts, VALUES))])
                time.sleep(0.003)
            step += 1

    sender = threading.Thread(target=trickle, daemon=True)
    try:
        sender.start()
        kit_out = svc.settings.kafka.output_topic
        kit.consume_until(kit_out, 30, timeout=30)  # flowing
        batches = svc.metric("sensorcast_batch_seconds_count")
        tapped.wiretap.reset()
        time.sleep(3.0)
        tally = tapped.wiretap.snapshot()
        batches = svc.metric("sensorcast_batch_seconds_count") - batches
    finally:
        stop.set()
        sender.join(10)
        assert svc.stop() == 0
        kit.close()
    roles = _service_roles(tally, svc.settings.kafka.client_id)
    fetches = _rate(tally, roles, FETCH) * tally.seconds
    produces = _rate(tally, roles, PRODUCE) * tally.seconds
    # readings arrive every few milliseconds: unpaced, a fetch would follow each round trip
    assert batches > 0
    assert fetches <= tally.seconds * 1000 / pause_ms * 1.25 + 2
    # a micro-batch's forecasts leave together: one request (librdkafka: one per partition)
    per_batch = 1 if client == "kafka-python" else svc.settings.kafka.partitions
    assert 0 < produces <= batches * per_batch * 1.25 + 2
