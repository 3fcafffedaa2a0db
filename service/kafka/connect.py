"""One attempt to reach the broker: check (or create) the topics, open the producers and
consumers (the input's, the changelog's)."""

from __future__ import annotations

from dataclasses import dataclass

from kafka import KafkaAdminClient

from service.config import KafkaSettings
from service.errors import TopicError
from service.kafka.changelog import ChangelogReader, ChangelogWriter, changelog_topic
from service.kafka.sink import KafkaSink
from service.kafka.source import KafkaSource, RebalanceHandler
from service.kafka.topics import ensure_topics

__all__ = ["Transport", "connect"]

# How long one attempt may take to reach the broker; the caller's backoff runs between them.
BOOTSTRAP_TIMEOUT_MS = 3000


@dataclass
class Transport:
    source: KafkaSource
    sink: KafkaSink
    partitions: dict[str, int]  # topic -> partition count
    #: The output topic has the input's partition count: a forecast can go to its
    #: reading's partition number (which also spares the producer hashing every key).
    mirror_partitions: bool
    changelog_writer: ChangelogWriter
    changelog_reader: ChangelogReader


def connect(settings: KafkaSettings, handler: RebalanceHandler) -> Transport:
    """Raises kafka-python's errors (or OSError) when the broker cannot be reached, and
    `TopicError` when a topic is missing and may not be created, or when the changelog's
    partition count differs from the input's."""
    state_topic = changelog_topic(settings)
    admin = KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers.split(","),
        client_id=settings.client_id,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        reconnect_backoff_max_ms=BOOTSTRAP_TIMEOUT_MS // 3,
    )
    try:
        counts = ensure_topics(
            admin,
            input_topic=settings.input_topic,
            derived_topics=[settings.output_topic, settings.dead_letter_topic, state_topic],
            create=settings.create_topics,
            partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            topic_configs={state_topic: {"cleanup.policy": "compact"}},
        )
    finally:
        admin.close()
    if counts[state_topic] != counts[settings.input_topic]:
        raise TopicError(
            f"changelog topic {state_topic!r} has {counts[state_topic]} partitions and the input "
            f"{settings.input_topic!r} has {counts[settings.input_topic]}: they must be equal"
        )
    opened: list[KafkaSink | ChangelogWriter | ChangelogReader] = []
    try:
        sink = KafkaSink(settings)
        opened.append(sink)
        writer = ChangelogWriter(settings)
        opened.append(writer)
        reader = ChangelogReader(settings)
        opened.append(reader)
        source = KafkaSource(settings, handler)
    except BaseException:
        for client in opened:
            if isinstance(client, ChangelogReader):
                client.close()
            else:
                client.close(timeout=1.0)
        raise
    mirror = counts[settings.output_topic] == counts[settings.input_topic]
    return Transport(source, sink, counts, mirror, writer, reader)
