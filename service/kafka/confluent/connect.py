"""Open the confluent-kafka clients: topics checked with an AdminClient, then the sink, the
changelog writer and reader, and the source (last: it joins the group)."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient

from service.config import KafkaSettings
from service.kafka.confluent.changelog import ConfluentChangelogReader, ConfluentChangelogWriter
from service.kafka.confluent.config import base_config
from service.kafka.confluent.sink import ConfluentSink
from service.kafka.confluent.source import ConfluentSource
from service.kafka.confluent.topics import ensure_topics as _ensure
from service.kafka.topics import topic_plan
from service.transport import RebalanceHandler

__all__ = ["ensure_topics", "open_clients"]

# How long one attempt may take to reach the broker; the caller's backoff runs between them.
BOOTSTRAP_TIMEOUT = 3.0


def ensure_topics(settings: KafkaSettings, derived: list[str]) -> dict[str, int]:
    """The input and `derived` topics checked (created when allowed): partition counts."""
    admin = AdminClient(base_config(settings, settings.client_id))
    return _ensure(admin, **topic_plan(settings, derived), timeout=BOOTSTRAP_TIMEOUT)


def open_clients(
    settings: KafkaSettings, handler: RebalanceHandler
) -> tuple[ConfluentSource, ConfluentSink, ConfluentChangelogWriter, ConfluentChangelogReader]:
    """librdkafka connects in the background: nothing here waits for the broker."""
    sink = ConfluentSink(settings)
    writer = ConfluentChangelogWriter(settings)
    reader = ConfluentChangelogReader(settings)
    source = ConfluentSource(settings, handler)
    return source, sink, writer, reader
