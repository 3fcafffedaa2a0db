"""The Kafka transport: one attempt to reach the broker checks (or creates) the topics and
opens the producers and consumers (the input's, the changelog's) on the client library
``kafka.client`` names (kafka-python, or confluent-kafka in `service.kafka.confluent`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from service.config import KafkaSettings, changelog_topic
from service.errors import ConfigError, TopicError, TransportError
from service.kafka.changelog import ChangelogReader, ChangelogWriter
from service.kafka.probe import diagnose, refusal, tls_preflight
from service.kafka.security import kafka_python_options
from service.kafka.sink import KafkaSink
from service.kafka.source import KafkaSource
from service.kafka.topics import ensure_topics, topic_plan
from service.transport import (
    Clients,
    RebalanceHandler,
    Sink,
    Source,
    StateReader,
    StateWriter,
)

__all__ = ["KafkaTransport", "check_client"]

_Ensure = Callable[[KafkaSettings, list[str]], dict[str, int]]

# How long one attempt may take to reach the broker; the caller's backoff runs between them.
BOOTSTRAP_TIMEOUT_MS = 3000


def check_client(settings: KafkaSettings) -> None:
    """`ConfigError` in one line when the configured client library is not installed."""
    if settings.client == "confluent":
        try:
            import confluent_kafka  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "kafka.client=confluent needs the confluent-kafka package: "
                "pip install 'sensorcast[confluent]' (or set kafka.client=kafka-python)"
            ) from exc


class KafkaTransport:
    """Opens the service's clients on a Kafka cluster (`service.transport.Transport`)."""

    def __init__(self, settings: KafkaSettings) -> None:
        """Raises `ConfigError` when the client library ``kafka.client`` names is missing."""
        check_client(settings)

    def open(
        self, settings: KafkaSettings, handler: RebalanceHandler, extra_topics: Sequence[str] = ()
    ) -> Clients:
        """`extra_topics` are checked (and created) with the output topics (the shadow
        topic while a challenger runs). Raises `TransportError` when the broker cannot be reached, `ConfigError` when it
        refuses the security settings (a certificate that does not verify, TLS against a
        plaintext port or the other way round, a SASL login), and `TopicError` when a topic is missing and may not be
        created, or when the changelog's partition count differs from the input's."""
        refused = tls_preflight(settings)
        if refused is not None:
            raise ConfigError(refusal(settings, refused))
        try:
            if settings.client == "confluent":
                from service.kafka.confluent.connect import ensure_topics, open_clients

                counts = _check_topics(settings, ensure_topics, extra_topics)
                opened: tuple[Source, Sink, StateWriter, StateReader] = open_clients(
                    settings, handler
                )
            else:
                counts = _check_topics(settings, _ensure_topics_kafka_python, extra_topics)
                opened = _open_kafka_python(settings, handler)
        except TransportError as exc:
            # the clients only say "no broker"; a refused handshake or login needs the operator
            reason = diagnose(settings)
            if reason is None:
                raise
            raise ConfigError(refusal(settings, reason)) from exc
        source, sink, writer, reader = opened
        mirror = counts[settings.output_topic] == counts[settings.input_topic]
        return Clients(source, sink, writer, reader, counts, mirror)


def _check_topics(
    settings: KafkaSettings, ensure: _Ensure, extra_topics: Sequence[str]
) -> dict[str, int]:
    state_topic = changelog_topic(settings)
    derived = [settings.output_topic, settings.dead_letter_topic, state_topic, *extra_topics]
    counts = ensure(settings, derived)
    if counts[state_topic] != counts[settings.input_topic]:
        raise TopicError(
            f"changelog topic {state_topic!r} has {counts[state_topic]} partitions and the input "
            f"{settings.input_topic!r} has {counts[settings.input_topic]}: they must be equal"
        )
    return counts


def _ensure_topics_kafka_python(settings: KafkaSettings, derived: list[str]) -> dict[str, int]:
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers.split(","),
            client_id=settings.client_id,
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
            reconnect_backoff_max_ms=BOOTSTRAP_TIMEOUT_MS // 3,
            **kafka_python_options(settings),
        )
        try:
            return ensure_topics(admin, **topic_plan(settings, derived))
        finally:
            admin.close()
    except (KafkaError, OSError) as exc:
        raise TransportError(f"cannot reach the broker: {exc!r}") from exc


def _open_kafka_python(
    settings: KafkaSettings, handler: RebalanceHandler
) -> tuple[KafkaSource, KafkaSink, ChangelogWriter, ChangelogReader]:
    opened: list[KafkaSink | ChangelogWriter | ChangelogReader] = []
    try:
        sink = KafkaSink(settings)
        opened.append(sink)
        writer = ChangelogWriter(settings)
        opened.append(writer)
        reader = ChangelogReader(settings)
        opened.append(reader)
        source = KafkaSource(settings, handler)
    except BaseException as exc:
        for client in opened:
            if isinstance(client, ChangelogReader):
                client.close()
            else:
                client.close(timeout=1.0)
        if isinstance(exc, (KafkaError, OSError)):
            raise TransportError(f"cannot reach the broker: {exc!r}") from exc
        raise
    return source, sink, writer, reader
