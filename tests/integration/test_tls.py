"""Over mutual TLS, through a TLS terminator in front of the embedded broker that advertises
it (so every connection is TLS), on both clients: readings in with `sensorcast replay`'s
producer, forecasts out read with `sensorcast tail`'s reader, a checkpoint, then a restart
that restores every stream and continues its state. A wrong CA, a TLS client on a plaintext
port and a plaintext client on the TLS port are refused in one clear line within seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.config import KafkaSettings, ServiceSettings
from service.testing import add_sensor_lstm
from service.testing.tls import Certificates, SecuredBroker, make_certificates
from service.tools.replay import ReplayError, make_producer
from service.tools.tail import TailError, follow
from tests.conftest import KafkaKit
from tests.integration.securekit import forecasts, refusal
from tests.integration.servicekit import CLIENTS, reading, running, settings_for

N_STREAMS = 20


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_broker(certs: Certificates) -> Iterator[SecuredBroker]:
    """The embedded broker behind TLS that wants a client certificate signed by `certs.ca`."""
    with SecuredBroker(certs, client_ca=certs.ca) as secured:
        yield secured
        # the terminator first: with the clients' connections closed, the broker stops at
        # once instead of waiting them out (5 s)
        secured.relay.stop()


def _tls(certs: Certificates, ca: Path | None = None) -> dict[str, Any]:
    return {
        "kafka.security_protocol": "SSL",
        "kafka.ssl_cafile": str(ca or certs.ca),
        "kafka.ssl_certfile": str(certs.client_cert),
        "kafka.ssl_keyfile": str(certs.client_key),
    }


def _values(i: int, step: int) -> dict[str, float]:
    return {"temp": 20.0 + i + 0.5 * step, "pressure": 101.0 - 0.1 * step, "vibration": 0.5}


def _produce(kafka: KafkaSettings, topic: str, step: int) -> None:
    """One reading per stream at `step`, sent with replay's producer."""
    producer = make_producer(kafka)
    try:
        ts = 1_700_000_000.0 + 300.0 * step
        for i in range(N_STREAMS):
            sid = f"tls-{i:02d}"
            producer.send(topic, key=sid.encode(), value=reading(sid, ts, _values(i, step)))
        producer.flush(timeout=30)
    finally:
        producer.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_service_over_mutual_tls_forecasts_checkpoints_and_restores(
    tls_broker: SecuredBroker,
    certs: Certificates,
    tmp_path: Path,
    client: str,
    request: pytest.FixtureRequest,
) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    names = KafkaKit(tls_broker.bootstrap, request.node.name)  # names only: opens no client
    settings = settings_for(
        tls_broker.bootstrap,
        model.registry,
        model.card.name,
        names.name,
        **{"kafka.client": client, **_tls(certs)},
    )
    k = settings.kafka
    with running(settings) as first:
        first.wait_ready()
        for step in range(3):
            _produce(k, k.input_topic, step)
        assert len(forecasts(k, k.output_topic, 3 * N_STREAMS)) >= 3 * N_STREAMS
    assert first.metric("sensorcast_checkpoints_total", {"outcome": "ok"}) >= 1
    assert first.metric("sensorcast_changelog_records_total", {"kind": "state"}) >= N_STREAMS

    with running(settings) as second:
        second.wait_ready()  # readiness includes the restore
        restored = sum(
            second.metric("sensorcast_restored_streams", {"partition": str(p)}) for p in range(4)
        )
        assert restored == N_STREAMS
        _produce(k, k.input_topic, 3)
        views = forecasts(k, k.output_topic, 4 * N_STREAMS)
    assert len({(v.stream_id, v.ts) for v in views}) == 4 * N_STREAMS
    for i in range(N_STREAMS):
        rows = np.array([list(_values(i, s).values()) for s in range(4)])
        expected = model.expected(rows)[:, :, 0]
        mine = sorted((v for v in views if v.stream_id == f"tls-{i:02d}"), key=lambda v: v.ts)
        actual = np.asarray([v.forecast["temp"] for v in mine])
        # the step after the restart continues the restored state: equal to one whole run
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6)


def _service(bootstrap: str, tmp_path: Path, client: str, **security: Any) -> ServiceSettings:
    model = add_sensor_lstm(tmp_path / "models")
    names = KafkaKit(bootstrap, "refused")
    return settings_for(
        bootstrap,
        model.registry,
        model.card.name,
        names.name,
        **{"kafka.client": client},
        **security,
    )


@pytest.mark.parametrize("client", CLIENTS)
def test_a_wrong_ca_is_refused_in_one_line(
    tls_broker: SecuredBroker, certs: Certificates, tmp_path: Path, client: str
) -> None:
    settings = _service(tls_broker.bootstrap, tmp_path, client, **_tls(certs, ca=certs.other_ca))
    message, seconds = refusal(settings)
    assert "\n" not in message and seconds < 20
    assert f"the TLS certificate of {tls_broker.bootstrap} does not verify" in message
    assert "kafka.ssl_cafile" in message


@pytest.mark.parametrize("client", CLIENTS)
def test_a_plaintext_client_on_the_tls_port_is_told_to_use_tls(
    tls_broker: SecuredBroker, tmp_path: Path, client: str
) -> None:
    settings = _service(tls_broker.bootstrap, tmp_path, client)
    message, seconds = refusal(settings)
    assert "\n" not in message and seconds < 20
    assert f"{tls_broker.bootstrap} is a TLS port and kafka.security_protocol is PLAINTEXT" in (
        message
    )


@pytest.mark.parametrize("client", CLIENTS)
def test_a_tls_client_on_a_plaintext_port_is_told_so(
    tls_broker: SecuredBroker, certs: Certificates, tmp_path: Path, client: str
) -> None:
    plaintext = tls_broker.plaintext_bootstrap
    settings = _service(plaintext, tmp_path, client, **_tls(certs))
    message, seconds = refusal(settings)
    assert "\n" not in message and seconds < 20
    assert f"{plaintext} is a plaintext Kafka port and kafka.security_protocol is SSL" in message


def test_the_tools_are_refused_in_one_line(tls_broker: SecuredBroker, certs: Certificates) -> None:
    wrong_ca = KafkaSettings(
        bootstrap_servers=tls_broker.bootstrap,
        **{k.removeprefix("kafka."): v for k, v in _tls(certs, ca=certs.other_ca).items()},
    )
    with pytest.raises(ReplayError, match=r"does not verify .*kafka\.ssl_cafile"):
        make_producer(wrong_ca)
    plaintext_port = KafkaSettings(
        bootstrap_servers=tls_broker.plaintext_bootstrap,
        **{k.removeprefix("kafka."): v for k, v in _tls(certs).items()},
    )
    with pytest.raises(TailError, match=r"is a plaintext Kafka port and kafka\.security_proto"):
        follow(plaintext_port, "forecasts", lambda view: None, idle_timeout=1)


def test_with_topics_made_beforehand_the_service_needs_no_topic_rights(
    tls_broker: SecuredBroker, certs: Certificates, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``kafka.create_topics=false``: the least-privilege set-up of docs/deploy.md, where an
    administrator made the topics and the service may only describe, read and write them."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from service.config import changelog_topic
    from service.kafka.security import kafka_python_options

    model = add_sensor_lstm(tmp_path / "models")
    names = KafkaKit(tls_broker.bootstrap, request.node.name)
    settings = settings_for(
        tls_broker.bootstrap,
        model.registry,
        model.card.name,
        names.name,
        **{"kafka.create_topics": False, **_tls(certs)},
    )
    k = settings.kafka
    admin = KafkaAdminClient(bootstrap_servers=k.bootstrap_servers, **kafka_python_options(k))
    try:
        topics = [k.input_topic, k.output_topic, k.dead_letter_topic, changelog_topic(k)]
        admin.create_topics([NewTopic(t, 4, 1) for t in topics])
    finally:
        admin.close()
    with running(settings) as svc:
        svc.wait_ready()
        _produce(k, k.input_topic, 0)
        views = forecasts(k, k.output_topic, N_STREAMS)
    assert {v.stream_id for v in views} == {f"tls-{i:02d}" for i in range(N_STREAMS)}
