"""Topic checks and creation with confluent-kafka's AdminClient: the same rules as
`service.kafka.topics` (derived topics copy the input's partition count, the changelog is
created compacted), through its `ensure_with`."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.cimpl import NewTopic

from service.errors import TopicError, TransportError
from service.kafka.confluent.config import describe, error_of
from service.kafka.topics import TopicPlan, ensure_with

__all__ = ["ensure_topics", "partition_counts"]

log = logging.getLogger(__name__)


def partition_counts(admin: Any, topics: Sequence[str], timeout: float) -> dict[str, int]:
    """Partition count of each topic in `topics` that exists.

    Asks for the metadata of every topic: asking for named ones may create them on a broker
    that creates topics on first use.
    """
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TransportError(f"cannot reach the broker: {describe(exc)}") from exc
    found: dict[str, int] = {}
    for name in topics:
        entry = metadata.topics.get(name)
        if entry is None:
            continue
        if entry.error is not None:
            if entry.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise TopicError(f"topic {name!r}: the broker reports {entry.error.str()}")
        found[name] = len(entry.partitions)
    return found


def _create(
    admin: Any,
    topic: str,
    partitions: int,
    replication_factor: int,
    configs: Mapping[str, str] | None,
    timeout: float,
) -> None:
    spec = NewTopic(topic, partitions, replication_factor, config=dict(configs or {}))
    try:
        admin.create_topics([spec], operation_timeout=timeout)[topic].result()
    except KafkaException as exc:
        err = error_of(exc)
        if err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return  # another member created it first
        raise TopicError(f"cannot create topic {topic!r}: {describe(exc)}") from exc
    # like kafka-python's wait_for_metadata: the topic is usable once the metadata shows it
    deadline = time.monotonic() + timeout
    while topic not in partition_counts(admin, [topic], timeout) and time.monotonic() < deadline:
        time.sleep(0.05)
    log.info(
        "topic created topic=%s partitions=%d replication=%d", topic, partitions, replication_factor
    )


def ensure_topics(
    admin: Any, *, timeout: float = 10.0, **plan: Unpack[TopicPlan]
) -> dict[str, int]:
    """`service.kafka.topics.ensure_topics` with an AdminClient; `timeout` is how long, in
    seconds, one metadata request or topic creation may take."""
    return ensure_with(
        lambda topics: partition_counts(admin, topics, timeout),
        lambda topic, n, rf, configs: _create(admin, topic, n, rf, configs, timeout),
        **plan,
    )
